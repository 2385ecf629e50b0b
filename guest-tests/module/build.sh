#!/bin/sh
# Build cxl_accel_t2.ko inside the VM environment root, against its kernel headers.
#
# usage: guest-tests/module/build.sh ROOT OUTDIR [KERNEL_RELEASE [KDIR]]
#
# ROOT is a Debian root with gcc and make: the one of scripts/setup-vm-env, or
# another of scripts/setup-kernel. KERNEL_RELEASE defaults to the only (or newest)
# /lib/modules/* in ROOT that has a build directory; the module builds against
# ROOT's /lib/modules/KERNEL_RELEASE/build, or against KDIR, a kernel build tree on
# the host, mounted into ROOT at its own path for the build (its Makefiles name
# their own absolute paths). Output: OUTDIR/cxl_accel_t2.ko.
#
# The chroot's /dev and /proc mounts are made in a private mount namespace
# (unshare -m), so they vanish when the build ends, even on failure, and never
# disturb mounts that others hold on ROOT. Rebuilds only when a source changed.
set -eu

if [ $# -lt 2 ] || [ $# -gt 4 ]; then
    echo "usage: $0 ROOT OUTDIR [KERNEL_RELEASE [KDIR]]" >&2
    exit 2
fi
ROOT=$(cd "$1" && pwd)
mkdir -p "$2"
OUT=$(cd "$2" && pwd)
SRC=$(cd "$(dirname "$0")" && pwd)

KDIR=
if [ $# -ge 3 ]; then
    KREL=$3
    [ $# -eq 4 ] && KDIR=$(cd "$4" && pwd)
else
    KREL=
    for d in "$ROOT"/lib/modules/*/build; do
        [ -e "$d/Makefile" ] || continue
        KREL=$(basename "$(dirname "$d")")
    done
fi
if [ -n "$KDIR" ]; then
    if [ ! -e "$KDIR/Makefile" ]; then
        echo "build.sh: $KDIR is not a kernel build tree" >&2
        exit 1
    fi
elif [ -z "$KREL" ] || [ ! -e "$ROOT/lib/modules/$KREL/build/Makefile" ]; then
    echo "build.sh: no kernel headers for '${KREL:-?}' in $ROOT/lib/modules/*/build" >&2
    exit 1
fi

# Up to date? (sources and this script older than the output)
KO="$OUT/cxl_accel_t2.ko"
if [ -f "$KO" ] && [ -f "$OUT/cxl_accel_t2.krel" ] &&
   [ "$(cat "$OUT/cxl_accel_t2.krel")" = "$KREL $KDIR" ] &&
   [ -z "$(find "$SRC" -maxdepth 1 -type f -newer "$KO")" ]; then
    echo "build.sh: $KO is up to date ($KREL)"
    exit 0
fi

BUILD_REL=/tmp/cxl-accel-t2-build.$$
BUILD="$ROOT$BUILD_REL"
rm -rf "$BUILD"
mkdir -p "$BUILD"
KO_TMP="$KO.tmp.$$"
# On any exit; a signal exits (with the shell's status for it) after removing them.
trap 'rm -rf "$BUILD" "$KO_TMP"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
cp "$SRC/cxl_accel_t2.c" "$SRC/Kbuild" "$BUILD/"

# shellcheck disable=SC2016 # the inner sh expands its own positional parameters
unshare --mount --propagation private sh -eu -c '
    mount --bind /dev "$1/dev"
    mount -t proc proc "$1/proc"
    kdir=/lib/modules/$2/build
    if [ -n "$4" ]; then
        mkdir -p "$1$4"
        mount --bind "$4" "$1$4"
        kdir=$4
    fi
    chroot "$1" make -s -C "$kdir" M="$3" modules
' sh "$ROOT" "$KREL" "$BUILD_REL" "$KDIR"

# A temporary name of this build's own, renamed into place: concurrent builds into
# OUTDIR never write the same file.
cp "$BUILD/cxl_accel_t2.ko" "$KO_TMP"
mv "$KO_TMP" "$KO"
echo "$KREL $KDIR" > "$OUT/cxl_accel_t2.krel"
echo "build.sh: built $KO for $KREL"
