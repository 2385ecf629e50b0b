//! The kernel's side of the lifecycle checks: cxl-cli listings, the region at the
//! firmware's HPA, the accelerator driver's binding, PCI reset methods.

use crate::checks::c_kernel::{self, memdev_of};
use crate::report::NotPassed;
use crate::sys::{self, CXL_DEVICES, PCI_DEVICES};
use serde_json::Value;
use std::path::Path;

pub const DRIVER_DIR: &str = "/sys/bus/pci/drivers/cxl_accel_t2";

/// `cxl list ARGS` as a list of objects: cxl-cli prints nothing when nothing
/// matches, one object for one match and an array for several.
pub fn cxl_list(args: &[&str]) -> Result<Vec<Value>, String> {
    let mut a = vec!["list"];
    a.extend_from_slice(args);
    let out = sys::run("cxl", &a)?;
    parse_listing(&out).map_err(|e| format!("cxl {}: {e}", a.join(" ")))
}

pub fn parse_listing(out: &str) -> Result<Vec<Value>, String> {
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    match serde_json::from_str::<Value>(out) {
        Ok(Value::Array(v)) => Ok(v),
        Ok(o @ Value::Object(_)) => Ok(vec![o]),
        Ok(other) => Err(format!("unexpected JSON {other}")),
        Err(e) => Err(format!("output is not JSON ({e}): {out}")),
    }
}

/// A number as cxl-cli prints it ("0x2d0000000", or a plain integer).
pub fn json_u64(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| crate::config::parse_u64(s).ok()))
}

/// Regions in a `cxl list -R` listing: (name, resource).
pub fn listed_regions(objs: &[Value]) -> Vec<(String, Option<u64>)> {
    objs.iter()
        .filter_map(|o| {
            let name = o.get("region")?.as_str()?.to_string();
            Some((name, o.get("resource").and_then(json_u64)))
        })
        .collect()
}

/// Whether `cxl list -R` (with `-i`: idle regions too) lists `region`.
pub fn region_listed(region: &str, idle: bool) -> Result<bool, String> {
    let args: &[&str] = if idle { &["-R", "-i"] } else { &["-R"] };
    Ok(listed_regions(&cxl_list(args)?)
        .iter()
        .any(|(n, _)| n == region))
}

/// The region sysfs shows at HPA `base`, if any.
pub fn region_at(base: u64) -> Option<String> {
    sys::list_dir(CXL_DEVICES)
        .into_iter()
        .filter(|d| d.starts_with("region"))
        .find(|r| sys::read_num(format!("{CXL_DEVICES}/{r}/resource")).ok() == Some(base))
}

pub fn dev_path(bdf: &str) -> String {
    format!("{PCI_DEVICES}/{bdf}")
}

pub fn present(bdf: &str) -> bool {
    Path::new(&dev_path(bdf)).exists()
}

/// The driver bound to the PCI function, if any.
pub fn driver(bdf: &str) -> Option<String> {
    sys::link_name(format!("{}/driver", dev_path(bdf)))
}

pub fn bound(bdf: &str) -> bool {
    driver(bdf).as_deref() == Some(c_kernel::MODULE)
}

/// Unbind the accelerator driver (a no-op when it is not bound).
pub fn unbind(bdf: &str) -> Result<(), String> {
    if !bound(bdf) {
        return Ok(());
    }
    sys::write_attr(format!("{DRIVER_DIR}/unbind"), bdf)
        .map_err(|e| format!("unbind {bdf}: {}", sys::errno(&e)))
}

/// Bind the accelerator driver, unless it already is (deferred probing may have
/// bound it first).
pub fn bind(bdf: &str) -> Result<(), String> {
    if bound(bdf) {
        return Ok(());
    }
    match sys::write_attr(format!("{DRIVER_DIR}/bind"), bdf) {
        Ok(()) => Ok(()),
        Err(_) if bound(bdf) => Ok(()),
        Err(e) => Err(format!("bind {bdf}: {}", sys::errno(&e))),
    }
}

/// What the driver and the CXL core show once a device is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub region: String,
    pub memdev: String,
}

/// Wait up to `ms` for the driver to be bound with the region at `base`+`size`
/// committed, and the module to report that range.
pub fn wait_attached(bdf: &str, base: u64, size: u64, ms: u64) -> Result<Attached, String> {
    let dev = dev_path(bdf);
    let got = sys::wait_for(ms, || {
        if !bound(bdf) {
            return None;
        }
        let region = region_at(base)?;
        let commit = sys::read_num(format!("{CXL_DEVICES}/{region}/commit")).ok()?;
        let rsize = sys::read_num(format!("{CXL_DEVICES}/{region}/size")).ok()?;
        let mstart = sys::read_num(format!("{dev}/cxl_region_start")).ok()?;
        let msize = sys::read_num(format!("{dev}/cxl_region_size")).ok()?;
        let memdev = memdev_of(&dev)?;
        (commit == 1 && rsize == size && (mstart, msize) == (base, size))
            .then_some(Attached { region, memdev })
    });
    got.ok_or_else(|| {
        format!(
            "no attached region at {base:#x}+{size:#x} within {ms} ms: driver {:?}, region {:?}, cxl devices [{}]",
            driver(bdf),
            region_at(base),
            sys::list_dir(CXL_DEVICES).join(" ")
        )
    })
}

/// Wait up to `ms` for the region at `base`, the memdev of the device and the
/// accelerator driver's binding to be gone.
pub fn wait_detached(bdf: &str, base: u64, ms: u64) -> Result<(), String> {
    let dev = dev_path(bdf);
    sys::wait_for(ms, || {
        (region_at(base).is_none() && memdev_of(&dev).is_none() && !bound(bdf)).then_some(())
    })
    .ok_or_else(|| {
        format!(
            "after {ms} ms: region {:?}, memdev {:?}, driver {:?}",
            region_at(base),
            memdev_of(&dev),
            driver(bdf)
        )
    })
}

/// The kernel log line the accelerator module prints when its remove path runs.
pub fn detached_line(bdf: &str) -> String {
    format!("{} {bdf}: detached", c_kernel::MODULE)
}

/// Reset the function with the kernel's reset method `method` (sysfs
/// `reset_method`, then `reset`). A method the kernel does not offer, or a reset it
/// refuses, is a skip with the kernel's errno; the default methods are restored.
pub fn reset_with(bdf: &str, method: &str) -> Result<String, NotPassed> {
    let dev = dev_path(bdf);
    let rm = format!("{dev}/reset_method");
    let offered = sys::read_attr(&rm)?;
    sys::write_attr(&rm, method).map_err(|e| {
        NotPassed::Skip(format!(
            "the kernel refused reset_method {method} (offered: {offered}): {}",
            sys::errno(&e)
        ))
    })?;
    let r = sys::write_attr(format!("{dev}/reset"), "1");
    let restore = sys::write_attr(&rm, "default");
    r.map_err(|e| {
        NotPassed::Skip(format!(
            "the kernel refused the {method} reset: {}",
            sys::errno(&e)
        ))
    })?;
    restore.map_err(|e| format!("write default to {rm}: {}", sys::errno(&e)))?;
    Ok(offered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_of_none_one_and_several() {
        assert!(parse_listing("").unwrap().is_empty());
        assert!(parse_listing("\n").unwrap().is_empty());
        let one = parse_listing(
            r#"{"region":"region0","resource":"0x2d0000000","size":"256.00 MiB (268.44 MB)","decode_state":"commit","state":"disabled"}"#,
        )
        .unwrap();
        assert_eq!(
            listed_regions(&one),
            vec![("region0".to_string(), Some(0x2_d000_0000))]
        );
        let two = parse_listing(
            r#"[{"region":"region0","resource":"0x2d0000000"},{"region":"region1","resource":12}]"#,
        )
        .unwrap();
        assert_eq!(
            listed_regions(&two),
            vec![
                ("region0".to_string(), Some(0x2_d000_0000)),
                ("region1".to_string(), Some(12))
            ]
        );
        assert!(parse_listing("cxl list: oops").is_err());
        assert!(parse_listing("3").is_err());
    }
}
