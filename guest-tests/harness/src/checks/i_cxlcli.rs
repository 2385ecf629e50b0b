//! i. cxl-cli's view (`cxl list -M -D -R`) agrees with sysfs and the firmware step.

use super::{need, Ctx};
use crate::json;
use crate::report::Reporter;
use crate::sys;
use serde_json::Value as Json;

/// Check the JSON of `cxl list -M -D -R` against what sysfs showed.
#[allow(clippy::too_many_arguments)]
pub fn verify(
    j: &Json,
    memdev: &str,
    bdf: &str,
    serial: u64,
    capacity: u64,
    ep_decoder: &str,
    region: &str,
    base: u64,
    size: u64,
) -> Result<String, String> {
    let one = |key: &str, val: &str| -> Result<&Json, String> {
        let mut v = Vec::new();
        json::find_objects(j, key, val, &mut v);
        match v.as_slice() {
            [o] => Ok(*o),
            [] => Err(format!("no object with {key}={val}")),
            _ => Err(format!("{} objects with {key}={val}", v.len())),
        }
    };
    let num = |o: &Json, k: &str| o.get(k).and_then(json::as_u64);
    let s = |o: &Json, k: &str| o.get(k).and_then(Json::as_str).map(String::from);
    let mut errs = Vec::new();

    let m = one("memdev", memdev)?;
    // 7.3 exports no serial or ram/size for a DEVMEM memdev; when cxl-cli prints
    // them, they must agree
    if m.get("serial").is_some() && num(m, "serial") != Some(serial) {
        errs.push(format!(
            "memdev serial {:?} != {serial:#x}",
            num(m, "serial")
        ));
    }
    if m.get("ram_size").is_some() && num(m, "ram_size") != Some(capacity) {
        errs.push(format!(
            "memdev ram_size {:?} != {capacity:#x}",
            num(m, "ram_size")
        ));
    }
    if s(m, "host").as_deref() != Some(bdf) {
        errs.push(format!("memdev host {:?} != {bdf}", s(m, "host")));
    }

    let mut ds = Vec::new();
    json::find_objects(j, "decoder", ep_decoder, &mut ds);
    ds.retain(|o| o.get("resource").is_some());
    let d = match ds.as_slice() {
        [o] => *o,
        _ => {
            return Err(format!(
                "{} decoder objects {ep_decoder} with a resource",
                ds.len()
            ))
        }
    };
    let dv = (
        num(d, "resource"),
        num(d, "size"),
        num(d, "dpa_resource"),
        num(d, "dpa_size"),
        s(d, "mode"),
        s(d, "region"),
    );
    let dw = (
        Some(base),
        Some(size),
        Some(0),
        Some(size),
        Some("ram".to_string()),
        Some(region.to_string()),
    );
    // dpa_resource 0 is printed (size is non-zero)
    if dv != dw {
        errs.push(format!("{ep_decoder} (resource, size, dpa_resource, dpa_size, mode, region) = {dv:x?}, want {dw:x?}"));
    }

    // decoders carry a "region" key too; the region object has no "decoder"
    let mut rs = Vec::new();
    json::find_objects(j, "region", region, &mut rs);
    rs.retain(|o| o.get("decoder").is_none());
    let r = match rs.as_slice() {
        [o] => *o,
        _ => return Err(format!("{} region objects {region}", rs.len())),
    };
    let rv = (num(r, "resource"), num(r, "size"), s(r, "decode_state"));
    let rw = (Some(base), Some(size), Some("commit".to_string()));
    if rv != rw {
        errs.push(format!(
            "{region} (resource, size, decode_state) = {rv:x?}, want {rw:x?}"
        ));
    }

    // a port (host bridge) decoder maps the same range; root decoders are decoder0.*
    let mut decoders = Vec::new();
    json::objects_with(j, "decoder", &mut decoders);
    let others = decoders
        .iter()
        .filter(|o| {
            let n = s(o, "decoder").unwrap_or_default();
            n != ep_decoder && !n.starts_with("decoder0.")
        })
        .filter(|o| num(o, "resource") == Some(base) && num(o, "size") == Some(size))
        .count();
    if others == 0 {
        errs.push(format!("no port decoder maps {base:#x}+{size:#x}"));
    }

    if errs.is_empty() {
        Ok(format!(
            "{memdev}, {ep_decoder}, {region} {base:#x}+{size:#x}, {others} port decoder(s)"
        ))
    } else {
        Err(errs.join("; "))
    }
}

pub fn run(ctx: &mut Ctx, rep: &mut Reporter) {
    let mut listing = None;
    rep.check(
        "i.1",
        "`cxl list -M -D -R` shows memdev, decoders and region, agreeing with sysfs",
        || {
            let mem = need(&ctx.memdev, "memdev (c.3)")?;
            let region = need(&ctx.region, "region (c.7)")?;
            let id = need(&ctx.ep_id, "endpoint (c.4)")?;
            let (base, size) = need(&ctx.committed, "firmware commit (b.4)")?;
            let bdf = need(&ctx.bdf, "device (a.1)")?;
            let serial = need(&ctx.dsn, "DSN (a.2)")?;
            let cap = need(&ctx.capacity, "capacity (a.5)")?;
            let out = sys::run("cxl", &["list", "-M", "-D", "-R"])?;
            listing = Some(out.clone());
            let j = json::parse(&out)
                .map_err(|e| format!("cxl list output is not JSON ({e}): {out}"))?;
            verify(
                &j,
                &mem,
                &bdf,
                serial,
                cap,
                &format!("decoder{id}.0"),
                &region,
                base,
                size,
            )
        },
    );
    // For the record (README): what cxl-cli showed.
    if let Some(out) = listing {
        rep.note("cxl list -M -D -R:");
        for l in out.lines() {
            rep.note(l);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::tests::CXL_LIST;

    #[test]
    fn agrees_with_sample() {
        let j = json::parse(CXL_LIST).unwrap();
        // The sample's memdev and region, with `serial` and region base `base`.
        let sample = |serial: u64, base: u64| {
            verify(
                &j,
                "mem0",
                "0000:0d:00.0",
                serial,
                512 << 20,
                "decoder2.0",
                "region0",
                base,
                0x1000_0000,
            )
        };
        let ok = sample(0x0123_4567_89ab_cdef, 0x2_d000_0000);
        assert!(ok.is_ok(), "{ok:?}");
        let bad = sample(1, 0x2_d000_0000);
        assert!(bad.unwrap_err().contains("serial"));
        let bad = sample(0x0123_4567_89ab_cdef, 0x2_e000_0000);
        assert!(bad.is_err());
        assert!(verify(&j, "mem1", "x", 0, 0, "decoder2.0", "region0", 0, 0)
            .unwrap_err()
            .contains("no object"));
    }
}
