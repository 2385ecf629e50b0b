//! e. A user-created RAM region cannot take the DEVMEM decoder: the kernel's
//! create_ram_region regions are host-only, and attaching an accelerator decoder
//! fails with a type mismatch (-ENXIO). Recorded as the expected kernel policy. A
//! window for Type-2 memory only offers no create_ram_region at all.

use super::c_kernel::port_decoders;
use super::d_dpa::{alloc, get, release, set, DPA_ALLOC};
use super::{need, Ctx};
use crate::report::Reporter;
use crate::sys::{self, CXL_DEVICES};

pub fn run(ctx: &mut Ctx, rep: &mut Reporter) {
    rep.check(
        "e.1",
        "create_ram_region refuses the DEVMEM decoder (type mismatch, expected policy), or the window offers none",
        || {
            let id = need(&ctx.ep_id, "endpoint port (c.4)")?;
            let (base, size) = need(&ctx.committed, "firmware commit (b.4)")?;
            let cap = need(&ctx.capacity, "capacity (a.5)")?;
            if cap < size + DPA_ALLOC {
                return Err(format!(
                    "capacity {cap:#x} leaves no DPA for a second decoder"
                ));
            }
            let decs = port_decoders(id);
            let dec = decs
                .get(1)
                .cloned()
                .ok_or_else(|| format!("endpoint has only {decs:?}"))?;
            let tt = sys::read_attr(format!("{CXL_DEVICES}/{dec}/target_type"))?;
            if tt != "accelerator" {
                return Err(format!("{dec}: target_type {tt}, expected accelerator"));
            }
            // the root decoder of the window
            let root = port_decoders(0)
                .into_iter()
                .find(|d| {
                    get(d, "start")
                        .ok()
                        .is_some_and(|s| s <= base && base < s + get(d, "size").unwrap_or(0))
                })
                .ok_or("no root decoder covers the window")?;
            let create = format!("{CXL_DEVICES}/{root}/create_ram_region");
            if !std::path::Path::new(&create).exists() {
                let caps: Vec<String> = ["cap_ram", "cap_type2", "cap_type3"]
                    .iter()
                    .map(|a| {
                        format!(
                            "{a}={}",
                            sys::read_attr(format!("{CXL_DEVICES}/{root}/{a}")).unwrap_or_default()
                        )
                    })
                    .collect();
                // The kernel offers create_ram_region only on windows with Type-3 and RAM
                // restrictions (drivers/cxl/core/port.c, cxl_root_decoder_visible): on a
                // Type-2-only window no host-only region can be made to take the decoder.
                if caps.iter().any(|c| c == "cap_type3=0") {
                    return Ok(format!(
                        "{root} is Type-2-only ({}): it offers no create_ram_region",
                        caps.join(" ")
                    ));
                }
                return Err(format!(
                    "{root} offers no create_ram_region ({})",
                    caps.join(" ")
                ));
            }
            alloc(&dec, DPA_ALLOC)?;
            let res = (|| -> Result<String, String> {
                let name = sys::read_attr(&create)?;
                sys::write_attr(&create, &name).map_err(|e| format!("{create} <- {name}: {e}"))?;
                let out = (|| -> Result<String, String> {
                    let ig =
                        sys::read_attr(format!("{CXL_DEVICES}/{root}/interleave_granularity"))?;
                    set(&name, "interleave_ways", "1")
                        .map_err(|e| format!("{name}/interleave_ways: {e}"))?;
                    set(&name, "interleave_granularity", &ig)
                        .map_err(|e| format!("{name}/interleave_granularity <- {ig}: {e}"))?;
                    set(&name, "size", &format!("{DPA_ALLOC:#x}"))
                        .map_err(|e| format!("{name}/size: {e}"))?;
                    match set(&name, "target0", &dec) {
                        Ok(()) => Err(format!("{name}/target0 accepted DEVMEM {dec}")),
                        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                            let t0 = sys::read_attr(format!("{CXL_DEVICES}/{name}/target0"))
                                .unwrap_or_default();
                            if !t0.is_empty() {
                                return Err(format!("{name}/target0 refused but reads {t0}"));
                            }
                            Ok(format!("{name}/target0 <- {dec}: {e}"))
                        }
                        Err(e) => Err(format!("{name}/target0 <- {dec}: {e}, expected ENXIO")),
                    }
                })();
                let del = sys::write_attr(format!("{CXL_DEVICES}/{root}/delete_region"), &name);
                match (out, del) {
                    (Ok(s), Ok(())) => Ok(format!("{s}; {name} deleted")),
                    (Ok(s), Err(e)) => Err(format!("{s}; delete_region {name}: {e}")),
                    (Err(s), _) => Err(s),
                }
            })();
            let rel = release(&dec);
            match (res, rel) {
                (Ok(s), Ok(())) => Ok(s),
                (Ok(s), Err(e)) => Err(format!("{s}; {e}")),
                (Err(s), _) => Err(s),
            }
        },
    );
}
