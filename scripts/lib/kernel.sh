# Guest kernels for scripts/run-vm and scripts/e2e: which kernel a --kernel value
# names, and whether it has the kernel's Type-2 API. Source it after common.sh.
# shellcheck shell=bash
# shellcheck disable=SC2034 # PACKAGED_KERNELS and what resolve_kernel sets are for the caller

# The symbols the harness's driver (guest-tests/module/cxl_accel_t2.c) takes from the
# CXL core: the Type-2 API that Linux 7.2 brought (drivers/cxl: the CXL device state
# of a DEVMEM device, its component registers, its DPA capacity, and the probe that
# attaches it to the region firmware committed). `A|B`: either will do (7.3's
# cxl_set_capacity; 7.2 has only cxl_dpa_setup, which the module then calls). A kernel
# without them cannot run the harness; run-vm refuses it before booting. The list
# also holds the older CXL symbols the module takes (cxl_bus_type: it waits for a CXL
# root before deferring), so that it names everything the module needs.
# scripts/build-guest checks the module's undefined CXL symbols against this list
# each time it builds the module.
TYPE2_SYMBOLS=(_devm_cxl_dev_state_create cxl_pci_setup_regs "cxl_set_capacity|cxl_dpa_setup"
    devm_cxl_probe_mem cxl_bus_type)

# The packaged kernels (scripts/setup-kernel): the default first.
PACKAGED_KERNELS=(7.3 7.2 6.12)

# resolve_kernel SPEC MODULES_ARG: set KERNEL (image), MODULES (its modules tree),
# BUILD_ROOT (the root to build cxl_accel_t2.ko in; empty when it cannot be built)
# and KERNEL_LABEL (for reports) for a --kernel value:
#   a packaged version (7.3, 7.2, 6.12; scripts/setup-kernel prepares it),
#   `built` (the cached scripts/build-kernel of the default source and config),
#   or a path, which needs MODULES_ARG (its /lib/modules/<release> tree).
resolve_kernel() {
    local spec=$1 modules_arg=$2 line
    KERNEL="" MODULES="" BUILD_ROOT=""
    case $spec in
        7.3|7.2|6.12|built)
            [[ -z $modules_arg ]] || die "--modules goes with --kernel PATH, not --kernel $spec"
            local out
            if [[ $spec == built ]]; then
                out=$("$REPO/scripts/build-kernel" --print) ||
                    die "no cached kernel build: run scripts/build-kernel (about 10 minutes on 2 cores)"
            else
                out=$("$REPO/scripts/setup-kernel" "$spec") || die "scripts/setup-kernel $spec failed"
            fi
            while IFS= read -r line; do
                case $line in
                    KERNEL=*) KERNEL=${line#KERNEL=} ;;
                    MODULES=*) MODULES=${line#MODULES=} ;;
                    BUILD_ROOT=*) BUILD_ROOT=${line#BUILD_ROOT=} ;;
                esac
            done <<< "$out"
            ;;
        *)
            [[ -n $modules_arg ]] || die "--kernel $spec needs --modules (its /lib/modules/<release> tree)"
            KERNEL=$(realpath -e -- "$spec") || die "no kernel image at $spec"
            MODULES=$(realpath -e -- "$modules_arg") || die "no modules tree at $modules_arg"
            BUILD_ROOT=$VM_ROOT
            ;;
    esac
    [[ -f $KERNEL ]] || die "no kernel image at $KERNEL"
    [[ -d $MODULES/kernel ]] || die "$MODULES is not a kernel modules tree"
    KERNEL_LABEL=$(basename "$MODULES")
    [[ $spec == built ]] && KERNEL_LABEL="$KERNEL_LABEL (built)"
    return 0
}

# kernel_exports KERNEL MODULES: print the symbols the kernel exports, one per line,
# from what there is: the build tree's Module.symvers (every export, built in or
# modular), a real System.map (its `__ksymtab_S` entries; Debian's packages ship a
# one-line placeholder), and the modules under drivers/cxl (an exported S has a
# `__ksymtab_S` symbol; a module that imports S carries only `S`). Fails, printing
# nothing, when there is no Module.symvers or real System.map: the built-in symbols
# would be unknown.
kernel_exports() {
    local kernel=$1 modules=$2 rel f have=0 ko
    rel=$(basename "$modules")
    {
        if [[ -f $modules/build/Module.symvers ]]; then
            awk '{print $2}' "$modules/build/Module.symvers"
            have=1
        fi
        for f in "$modules/System.map" "$(dirname "$kernel")/System.map-$rel" "$modules/build/System.map"; do
            if [[ -f $f ]] && grep -q ' __ksymtab_' "$f"; then
                sed -n 's/^[0-9a-f]* [A-Za-z] __ksymtab_//p' "$f"
                have=1
                break
            fi
        done
        while IFS= read -r -d '' ko; do
            case $ko in
                *.xz) xz -dc "$ko" ;;
                *.zst) zstd -qdc "$ko" ;;
                *.gz) gzip -dc "$ko" ;;
                *) cat "$ko" ;;
            esac | grep -ao '__ksymtab_[A-Za-z0-9_]*' | sed 's/^__ksymtab_//'
        done < <(find -L "$modules/kernel/drivers/cxl" -name '*.ko*' -print0 2>/dev/null)
        echo "#have=$have"
    } | sort -u
}

# type2_missing KERNEL MODULES: print the TYPE2_SYMBOLS the kernel does not export,
# one per line; fails when its exports cannot be known (kernel_exports).
type2_missing() {
    local exports sym
    exports=$(kernel_exports "$1" "$2")
    grep -qx '#have=1' <<< "$exports" || return 1
    local alt ok
    for sym in "${TYPE2_SYMBOLS[@]}"; do
        ok=0
        for alt in ${sym//|/ }; do grep -qxF -- "$alt" <<< "$exports" && ok=1; done
        [[ $ok -eq 1 ]] || echo "${sym//|/ or }"
    done
}

# check_type2_api KERNEL MODULES LABEL: return 0 if the kernel has the Type-2 API;
# else print why on stderr (naming the missing symbols and where they were looked for)
# and return 1.
check_type2_api() {
    local kernel=$1 modules=$2 label=$3 missing
    if ! missing=$(type2_missing "$kernel" "$modules"); then
        log "kernel $label: cannot tell whether it has the CXL Type-2 API: no Module.symvers"             "in $modules/build and no System.map with its exports (Debian ships a placeholder)"
        return 1
    fi
    [[ -z $missing ]] && return 0
    log "kernel $label predates the CXL Type-2 API (Linux 7.2): it does not export" \
        "$(echo "$missing" | paste -sd, | sed 's/,/, /g') (looked in $modules/build/Module.symvers, System.map" \
        "and $modules/kernel/drivers/cxl). cxl_accel_t2 cannot attach an accelerator to a" \
        "region on it: use --kernel 7.3, 7.2, built, or a kernel >= 7.2"
    return 1
}
