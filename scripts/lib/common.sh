# Shared helpers for cxl-accel's scripts. Source it; do not run it.
# shellcheck shell=bash

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CXL_VM_ENV=${CXL_VM_ENV:-$HOME/.cache/cxl-accel/vm-env}
VM_ROOT=$CXL_VM_ENV/root
# shellcheck disable=SC2034 # for the scripts that source this file
GUEST_OUT=${CXL_GUEST_OUT:-$REPO/target/guest} HOST_TARGET=x86_64-unknown-linux-gnu

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() { printf '%s: error: %s\n' "${0##*/}" "$*" >&2; exit 1; }

# The distribution kernel release installed in the VM root (newest).
vm_kernel_release() {
    local d
    for d in "$VM_ROOT"/lib/modules/*/; do
        d=${d%/}
        [[ -d $d ]] && echo "${d##*/}"
    done | sort -V | tail -n1
}

# latest_initrd: the newest initramfs that scripts/build-guest made (for --no-build).
latest_initrd() {
    local f newest=""
    for f in "$GUEST_OUT"/initramfs-*.cpio.gz; do
        [[ -f $f && ( -z $newest || $f -nt $newest ) ]] && newest=$f
    done
    [[ -n $newest ]] || die "no initramfs in $GUEST_OUT: run scripts/build-guest (or drop --no-build)"
    echo "$newest"
}

# Mount /proc and /dev into the VM root, counted, so nested users balance.
root_mount() {
    mountpoint -q "$VM_ROOT/proc" || mount -t proc proc "$VM_ROOT/proc"
    mountpoint -q "$VM_ROOT/dev" || mount --bind /dev "$VM_ROOT/dev"
    mkdir -p "$VM_ROOT/dev/shm"
}
root_umount() {
    umount "$VM_ROOT/dev" 2>/dev/null || true
    umount "$VM_ROOT/proc" 2>/dev/null || true
}

in_root() {
    chroot "$VM_ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C HOME=/root "$@"
}

# --- Cleanup on every exit path -------------------------------------------------
# at_exit COMMAND [ARGS...]: run COMMAND with ARGS (as they are now) when the script
# exits: at its end, on an error under set -e, on die, or on SIGINT/SIGTERM/SIGHUP.
# The last registered runs first. For state that changes later, register a function
# that reads it then. Each must be safe to run more than once, and when there is
# nothing left to clean up.
_AT_EXIT=()
at_exit() {
    _AT_EXIT+=("$(printf '%q ' "$@")")
    trap _run_at_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP
}
_run_at_exit() {
    local i
    for ((i = ${#_AT_EXIT[@]} - 1; i >= 0; i--)); do eval "${_AT_EXIT[i]}" || true; done
    _AT_EXIT=()
}

# stop_pid PID [GRACE]: end a process this script started: SIGTERM, then SIGKILL
# after GRACE seconds (default 5) if it still runs; reap it if it is our child.
# Nothing happens for an empty PID or a process that is gone.
stop_pid() {
    local pid=$1 grace=${2:-5} i
    [[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < grace * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# run_child CMD...: run CMD as a background child and wait for it. Bash runs a trap
# only once the foreground command ends; a child waited for with `wait` lets a
# SIGTERM or SIGINT to this script act at once, and the exit handler then stops the
# child (with 30 s for its own cleanup). Returns CMD's status.
CHILD_PID=""
_stop_child() { stop_pid "$CHILD_PID" 30; CHILD_PID=""; }
run_child() {
    if [[ -z ${_CHILD_AT_EXIT:-} ]]; then
        _CHILD_AT_EXIT=1
        at_exit _stop_child
    fi
    "$@" &
    CHILD_PID=$!
    local rc=0
    wait "$CHILD_PID" || rc=$?
    CHILD_PID=""
    return "$rc"
}

# qemu_pid PIDFILE: the pid that QEMU wrote with -pidfile, if that process is still a
# QEMU (a stale file names a pid that may be reused).
qemu_pid() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ && $(ps -o comm= -p "$pid" 2>/dev/null) == qemu* ]] || return 1
    echo "$pid"
}

# --- The backend -------------------------------------------------------------------
# start_backend BINARY DIR LOG ARGS...: start cxl-accel-backend as nobody:nogroup, as
# every script runs it: it needs no privileges. DIR, its working directory, becomes
# nobody's (paths in ARGS are relative to it; /root above it is closed to nobody, so
# the binary is copied into DIR when nobody cannot run it where it is). stderr is
# appended to LOG; RUST_LOG defaults to info. Sets BACKEND_PID. Its 0600 sockets are
# nobody's; QEMU and the scripts, as root, connect all the same.
BACKEND_PID=""
# shellcheck disable=SC2034 # BACKEND_PID is for the caller
start_backend() {
    local bin=$1 dir=$2 logf=$3
    shift 3
    chown 65534:65534 "$dir"
    if ! setpriv --reuid=65534 --regid=65534 --clear-groups test -x "$bin"; then
        cp "$bin" "$dir/"
        bin=./${bin##*/}
    fi
    (cd "$dir" && RUST_LOG=${RUST_LOG:-info} exec setpriv --reuid=65534 --regid=65534 \
        --clear-groups "$bin" "$@") 2>>"$logf" &
    BACKEND_PID=$!
}

# wait_socket PATH PID: true once PATH is a socket (within 5 s), false if it is not
# by then or PID (the backend) ended first.
wait_socket() {
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -S $1 ]] && return 0
        kill -0 "$2" 2>/dev/null || break
        sleep 0.05
    done
    [[ -S $1 ]]
}
