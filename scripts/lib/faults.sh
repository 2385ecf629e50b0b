# VM-level fault tests for scripts/e2e (issue 6). Source it after common.sh; each
# function returns 0 when the backend survives the fault as its --help says (a client
# that disconnects leaves the device state; the next connection is served), and logs
# why not.
# The daemon-level faults (a backend SIGKILL and restart, full or unwritable storage,
# paths in the way, bad configuration) are backend integration tests (backend/tests/).
# shellcheck shell=bash

# True once the backend log FILE has a line matching PATTERN (within 5 s).
fault_wait_log() {
    local pattern=$1 file=$2
    for _ in $(seq 50); do grep -q -- "$pattern" "$file" && return 0; sleep 0.1; done
    return 1
}

# QEMU killed with SIGKILL in mid-run: the backend logs the disconnect, keeps device
# memory, and serves the next QEMU, whose harness passes; the pattern the first guest
# wrote through BAR2 (check g) is in the --memory-file before and after that boot.
# The kill point is fixed: run-vm --kill-after g.2 has the harness hold after check
# g.2 (guest-tests/README.md, --hold-after) and kills QEMU while the guest waits.
# usage: fault_qemu_sigkill WORKDIR   (console logs and the backend log go there)
FAULT_BPID="" FAULT_DIR=""
# Whatever ends the script (an error, SIGINT/SIGTERM) stops the fault's backend and
# removes its folder; nothing is left to do once fault_qemu_sigkill has returned.
fault_cleanup() {
    stop_pid "$FAULT_BPID"
    FAULT_BPID=""
    [[ -z $FAULT_DIR ]] || rm -rf "$FAULT_DIR"
    FAULT_DIR=""
}
fault_qemu_sigkill() {
    local work=$1 dir rc=0 bpid size=$((512 << 20))
    local verify=("$REPO/target/$HOST_TARGET/release/cxl-guest-test" verify-pattern --size "$size")
    at_exit fault_cleanup
    # On the VM root's file system, so that run-vm can link the socket for QEMU;
    # the backend runs as nobody, with seccomp on, as in run-vm.
    dir=$(mktemp -d "$VM_ROOT/run/cxl-accel-fault.XXXXXX")
    FAULT_DIR=$dir
    start_backend "$REPO/target/release/cxl-accel-backend" "$dir" "$dir/backend.log" \
        --socket accel.sock --control control.sock --memory-file devmem.img --seccomp on
    bpid=$BACKEND_PID FAULT_BPID=$BACKEND_PID
    wait_socket "$dir/accel.sock" "$bpid" || log "fault: the backend made no socket"

    log "=== fault: QEMU SIGKILLed in mid-run (held after check g.2), then a second boot"
    if ! run_child "$REPO/scripts/run-vm" --no-build --backend-socket "$dir/accel.sock" \
        --kill-after g.2 --log "$work/fault-kill.console" > "$work/fault-kill.out" 2>&1; then
        log "fault: the first boot was not killed as planned:"; tail -n 20 "$work/fault-kill.out" >&2
        rc=1
    elif ! kill -0 "$bpid" 2>/dev/null; then
        log "fault: the backend died with QEMU"; rc=1
    elif ! grep -aq '^ok g\.2 ' "$work/fault-kill.console"; then
        log "fault: check g.2 did not pass before the kill"; rc=1
    elif ! fault_wait_log 'client disconnected' "$dir/backend.log"; then
        log "fault: the backend did not log the disconnect"; rc=1
    elif ! "${verify[@]}" --file "$dir/devmem.img"; then
        log "fault: the first guest's BAR2 pattern is not in the memory file after the kill"; rc=1
    elif ! run_child "$REPO/scripts/run-vm" --no-build --backend-socket "$dir/accel.sock" \
        --log "$work/fault-next.console" > "$work/fault-next.out" 2>&1; then
        log "fault: the next QEMU's harness failed:"; tail -n 30 "$work/fault-next.out" >&2
        rc=1
    fi
    kill -TERM "$bpid" 2>/dev/null
    if ! wait "$bpid"; then
        log "fault: the backend did not shut down cleanly"; rc=1
    fi
    FAULT_BPID=""
    if [[ $rc -eq 0 ]] && ! "${verify[@]}" --file "$dir/devmem.img"; then
        log "fault: the pattern is gone after the second boot"; rc=1
    fi
    if grep -q 'seccomp: system call' "$dir/backend.log"; then
        log "fault: the backend's seccomp filter stopped it"; rc=1
    fi
    if [[ $rc -eq 0 ]]; then
        log "=== fault: the backend logged the disconnect, kept device memory and served the next QEMU (harness passed)"
    else
        tail -n 30 "$dir/backend.log" >&2
    fi
    cp "$dir/backend.log" "$work/fault-backend.log"
    fault_cleanup
    return "$rc"
}
