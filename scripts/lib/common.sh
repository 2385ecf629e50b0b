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

# The folder of every cache of cxl-accel's scripts (outside the repository): the VM
# environment, other kernels' roots (setup-kernel), built kernels (build-kernel).
CXL_CACHE=${CXL_CACHE:-$(dirname "$CXL_VM_ENV")}

# root_mount_at ROOT: mount /proc and /dev into ROOT (a Debian root for chroot), each
# unless it is mounted already. Callers run in a private mount namespace (run-vm,
# setup-kernel), so the mounts vanish with them.
root_mount_at() {
    mountpoint -q "$1/proc" || mount -t proc proc "$1/proc"
    mountpoint -q "$1/dev" || mount --bind /dev "$1/dev"
    mkdir -p "$1/dev/shm"
}
root_umount_at() {
    umount "$1/dev" 2>/dev/null || true
    umount "$1/proc" 2>/dev/null || true
}
# The same for the VM root.
root_mount() { root_mount_at "$VM_ROOT"; }
root_umount() { root_umount_at "$VM_ROOT"; }

# in_root_at ROOT CMD...: run CMD chrooted in ROOT with a clean environment.
in_root_at() {
    local root=$1
    shift
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C HOME=/root "$@"
}
in_root() { in_root_at "$VM_ROOT" "$@"; }

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

# --- The host ------------------------------------------------------------------------
# host_install COMMAND [PACKAGE]: install PACKAGE (default: COMMAND) with the host's
# apt when COMMAND is missing; nothing when it is there. The host's apt sources are
# used as they are, never changed.
host_install() {
    local cmd=$1 pkg=${2:-$1}
    command -v "$cmd" >/dev/null && return 0
    log "installing $pkg on the host"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
    command -v "$cmd" >/dev/null || die "installing $pkg gave no $cmd"
}

# debian_mirror: print the Debian archive URL that this host's apt uses, for the VM
# root's debootstrap and apt (setup-vm-env) and the patched QEMU's source
# (qemu/build). $CXL_DEBIAN_MIRROR, when set, wins; otherwise debian_mirror_in reads
# /etc/apt for the host's release (VERSION_CODENAME of /etc/os-release).
debian_mirror() {
    local codename
    # shellcheck disable=SC1091 # the host's file, not ours
    codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
    debian_mirror_in /etc/apt "$codename"
}

# debian_mirror_in APT_DIR CODENAME: $CXL_DEBIAN_MIRROR if set; else the first
# enabled `deb` source in APT_DIR - sources.list.d/*.sources (deb822 URIs:), then
# sources.list and sources.list.d/*.list (one-line form) - with an http(s) URI,
# component main, and a suite that is CODENAME or a Debian suite alias (stable,
# oldstable, testing, unstable, sid), optionally with -updates or -backports. That
# leaves out the security archive (suite CODENAME-security) and third-party sources,
# whose suites and components are their own. Fails, saying so, if nothing matches.
debian_mirror_in() {
    local dir=$1 codename=$2 url
    if [[ -n ${CXL_DEBIAN_MIRROR:-} ]]; then
        echo "${CXL_DEBIAN_MIRROR%/}"
        return 0
    fi
    local files=() f
    for f in "$dir"/sources.list.d/*.sources "$dir"/sources.list "$dir"/sources.list.d/*.list; do
        [[ -f $f ]] && files+=("$f")
    done
    if [[ ${#files[@]} -gt 0 ]]; then
        url=$(awk -v codename="$codename" '
            function archive_suite(s) {
                sub(/-(updates|backports)$/, "", s)
                return (codename != "" && s == codename) || s ~ /^(stable|oldstable|testing|unstable|sid)$/
            }
            # One source: types, URIs, suites, components as space-separated lists.
            function consider(types, uris, suites, comps,   n, i, t, u, s, c, ok) {
                if (found != "") return
                n = split(types, t, " "); ok = 0
                for (i = 1; i <= n; i++) if (t[i] == "deb") ok = 1
                if (!ok) return
                n = split(comps, c, " "); ok = 0
                for (i = 1; i <= n; i++) if (c[i] == "main") ok = 1
                if (!ok) return
                n = split(suites, s, " "); ok = 0
                for (i = 1; i <= n; i++) if (archive_suite(s[i])) ok = 1
                if (!ok) return
                n = split(uris, u, " ")
                for (i = 1; i <= n; i++) if (u[i] ~ /^https?:\/\/[^\/]/) { found = u[i]; return }
            }
            function flush() {
                if (tolower(f["enabled"]) != "no") consider(f["types"], f["uris"], f["suites"], f["components"])
                delete f; key = ""
            }
            FNR == 1 { if (deb822) flush(); deb822 = (FILENAME ~ /\.sources$/) }
            deb822 {
                if ($0 ~ /^[ \t]*#/) next
                if ($0 ~ /^[ \t]*$/) { flush(); next }
                if ($0 ~ /^[ \t]/) { if (key != "") f[key] = f[key] " " $0; next }
                key = tolower($0); sub(/:.*/, "", key)
                v = $0; sub(/^[^:]*:[ \t]*/, "", v); f[key] = v
                next
            }
            {
                line = $0; sub(/#.*/, "", line)
                # options in brackets: [arch=amd64 signed-by=...]
                gsub(/\[[^]]*\]/, "", line)
                n = split(line, w, " ")
                if (n < 4) next
                comps = ""; for (i = 4; i <= n; i++) comps = comps " " w[i]
                consider(w[1], w[2], w[3], comps)
            }
            END { if (deb822) flush(); print found }
        ' "${files[@]}")
    fi
    if [[ -z ${url:-} ]]; then
        log "no Debian archive source for '${codename:-?}' in $dir (sources.list.d/*.sources," \
            "sources.list); set CXL_DEBIAN_MIRROR to a Debian mirror URL"
        return 1
    fi
    echo "${url%/}"
}

# --- The example vendor firmware ------------------------------------------------------
# build_vendor_example: build examples/vendor-firmware as a vendor would: from a copy
# outside the repository (a temporary folder, removed after), its path dependencies
# pointed back at this checkout, with its own lock file; run its tests and clippy.
# The build is cached in target/vendor-example. Prints the path of the acme-backend
# binary (release).
build_vendor_example() {
    local dir bin rc=0
    dir=$(mktemp -d /tmp/cxl-accel-vendor.XXXXXX)
    cp -r "$REPO/examples/vendor-firmware/." "$dir/"
    rm -rf "$dir/target"
    # path = "../../<crate>" -> path = "<this checkout>/<crate>"
    sed -i -E "s|path = \"\\.\\./\\.\\./([^\"]+)\"|path = \"$REPO/\\1\"|" "$dir/Cargo.toml"
    if grep -q 'path = "\.\.' "$dir/Cargo.toml"; then
        log "vendor example: a relative path dependency is left in $dir/Cargo.toml"
        rm -rf "$dir"
        return 1
    fi
    (
        cd "$dir"
        export CARGO_TARGET_DIR=$REPO/target/vendor-example
        cargo build --quiet --locked --release
        cargo test --quiet --locked >/dev/null
        cargo clippy --quiet --locked --all-targets -- -D warnings
    ) >&2 || rc=$?
    bin=$REPO/target/vendor-example/release/acme-backend
    rm -rf "$dir"
    [[ $rc -eq 0 && -x $bin ]] || { log "vendor example: build from a copy outside the repository failed"; return 1; }
    echo "$bin"
}
