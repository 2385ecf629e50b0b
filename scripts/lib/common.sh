# Shared helpers for cxl-accel's scripts. Source it; do not run it.
# shellcheck shell=bash

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CXL_VM_ENV=${CXL_VM_ENV:-$HOME/.cache/cxl-accel/vm-env}
VM_ROOT=$CXL_VM_ENV/root
GUEST_OUT=${CXL_GUEST_OUT:-$REPO/target/guest}
HOST_TARGET=x86_64-unknown-linux-gnu

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() { printf '%s: error: %s\n' "${0##*/}" "$*" >&2; exit 1; }

# The distribution kernel release installed in the VM root (newest).
vm_kernel_release() {
    ls "$VM_ROOT/lib/modules" | sort -V | tail -n1
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

# Parse a size such as 512M, 4G, 0x20000000 or 536870912 into bytes.
parse_size() {
    local s=$1 n mult=1
    case $s in
        *[kK]) mult=$((1 << 10)); n=${s%?} ;;
        *[mM]) mult=$((1 << 20)); n=${s%?} ;;
        *[gG]) mult=$((1 << 30)); n=${s%?} ;;
        *) n=$s ;;
    esac
    echo $((n * mult))
}
