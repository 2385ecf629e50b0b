//! d. DPA allocation through sysfs on the next endpoint decoder, its release, and
//! the kernel refusing a misaligned size and an out-of-order decoder.

use super::c_kernel::port_decoders;
use super::{need, Ctx};
use crate::report::Reporter;
use crate::sys::{self, CXL_DEVICES};

pub const DPA_ALLOC: u64 = 256 << 20;

/// Write an attribute of a CXL device; Ok(()) or the errno name.
pub fn set(dev: &str, name: &str, value: &str) -> Result<(), std::io::Error> {
    sys::write_attr(format!("{CXL_DEVICES}/{dev}/{name}"), value)
}

pub fn get(dev: &str, name: &str) -> Result<u64, String> {
    sys::read_num(format!("{CXL_DEVICES}/{dev}/{name}"))
}

/// Expect a write to be refused with `errno`.
pub fn refused(dev: &str, name: &str, value: &str, errno: i32) -> Result<String, String> {
    match set(dev, name, value) {
        Ok(()) => Err(format!("{dev}/{name} accepted {value}")),
        Err(e) if e.raw_os_error() == Some(errno) => Ok(format!("{dev}/{name} <- {value}: {e}")),
        Err(e) => Err(format!(
            "{dev}/{name} <- {value}: refused with {e}, expected errno {errno}"
        )),
    }
}

/// Allocate `size` of ram DPA on `dec`; returns dpa_resource.
pub fn alloc(dec: &str, size: u64) -> Result<u64, String> {
    set(dec, "mode", "ram").map_err(|e| format!("{dec}/mode <- ram: {e}"))?;
    set(dec, "dpa_size", &format!("{size:#x}"))
        .map_err(|e| format!("{dec}/dpa_size <- {size:#x}: {e}"))?;
    let got = get(dec, "dpa_size")?;
    if got != size {
        return Err(format!(
            "{dec}/dpa_size reads {got:#x} after writing {size:#x}"
        ));
    }
    get(dec, "dpa_resource")
}

pub fn release(dec: &str) -> Result<(), String> {
    set(dec, "dpa_size", "0").map_err(|e| format!("{dec}/dpa_size <- 0: {e}"))?;
    match get(dec, "dpa_size")? {
        0 => Ok(()),
        n => Err(format!("{dec}/dpa_size reads {n:#x} after release")),
    }
}

pub fn run(ctx: &mut Ctx, rep: &mut Reporter) {
    let next = |ctx: &Ctx| -> Result<(String, u64), String> {
        let id = need(&ctx.ep_id, "endpoint port (c.4)")?;
        let (_, size) = need(&ctx.committed, "firmware commit (b.4)")?;
        let cap = need(&ctx.capacity, "capacity (a.5)")?;
        if cap < size + DPA_ALLOC {
            return Err(format!(
                "capacity {cap:#x} leaves no 256 MiB after the {size:#x} region"
            ));
        }
        let decs = port_decoders(id);
        let d = decs
            .get(1)
            .cloned()
            .ok_or_else(|| format!("endpoint has only {decs:?}"))?;
        Ok((d, size))
    };

    rep.check(
        "d.1",
        "DPA allocation on the next endpoint decoder (mode=ram, dpa_size=256M)",
        || {
            let (d, region) = next(ctx)?;
            let res = alloc(&d, DPA_ALLOC)?;
            if res != region {
                return Err(format!(
                    "{d}: dpa_resource {res:#x}, expected {region:#x} (after decoder 0)"
                ));
            }
            Ok(format!(
                "{d}: dpa_resource {res:#x}, dpa_size {DPA_ALLOC:#x}"
            ))
        },
    );

    rep.check("d.2", "misaligned dpa_size refused", || {
        let (d, _) = next(ctx)?;
        let r = refused(&d, "dpa_size", "0x1000000", libc::EINVAL)?;
        let still = get(&d, "dpa_size")?;
        if still != DPA_ALLOC {
            return Err(format!("{r}; but dpa_size now reads {still:#x}"));
        }
        Ok(r)
    });

    rep.check("d.3", "DPA released (dpa_size=0)", || {
        let (d, _) = next(ctx)?;
        release(&d)?;
        Ok(format!("{d}: dpa_size 0"))
    });

    // d.4 needs a decoder to skip: with three or more endpoint decoders, the kernel
    // must refuse an allocation that skips a free one. With two there is nothing to
    // skip, so the kernel's other DPA refusal is checked instead: more than the free
    // capacity (hdm.c: -ENOSPC).
    let three = ctx
        .ep_id
        .as_ref()
        .map(|id| port_decoders(*id).len() >= 3)
        .unwrap_or(true);
    if three {
        rep.check("d.4", "out-of-order decoder refused", || {
            let id = need(&ctx.ep_id, "endpoint port (c.4)")?;
            let decs = port_decoders(id);
            let d = decs
                .get(2)
                .cloned()
                .ok_or_else(|| format!("endpoint has only {decs:?}"))?;
            // decoder .1 is free (d.3), so allocating on .2 skips it
            let _ = set(&d, "mode", "ram");
            let r = refused(&d, "dpa_size", &format!("{DPA_ALLOC:#x}"), libc::EBUSY)?;
            if get(&d, "dpa_size")? != 0 {
                return Err(format!("{r}; but {d}/dpa_size is non-zero"));
            }
            Ok(r)
        });
    } else {
        rep.check(
            "d.4",
            "allocation beyond the free DPA capacity refused",
            || {
                let (d, region) = next(ctx)?;
                let cap = need(&ctx.capacity, "capacity (a.5)")?;
                let too_big = cap - region + DPA_ALLOC;
                let _ = set(&d, "mode", "ram");
                let r = refused(&d, "dpa_size", &format!("{too_big:#x}"), libc::ENOSPC)?;
                if get(&d, "dpa_size")? != 0 {
                    return Err(format!("{r}; but {d}/dpa_size is non-zero"));
                }
                Ok(format!(
                    "{r} (2 decoders: none to skip for the out-of-order case)"
                ))
            },
        );
    }
}
