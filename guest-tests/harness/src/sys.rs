//! Small system helpers: sysfs attributes, the PCI config file, /proc parsing,
//! pagemap, modprobe.

use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const PCI_DEVICES: &str = "/sys/bus/pci/devices";
pub const CXL_DEVICES: &str = "/sys/bus/cxl/devices";

/// Read a sysfs attribute, trimmed.
pub fn read_attr(path: impl AsRef<Path>) -> Result<String, String> {
    let p = path.as_ref();
    fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("read {}: {e}", p.display()))
}

/// Read a numeric sysfs attribute (decimal or 0x hex).
pub fn read_num(path: impl AsRef<Path>) -> Result<u64, String> {
    let p = path.as_ref();
    let s = read_attr(p)?;
    crate::config::parse_u64(&s).map_err(|e| format!("{}: {e}", p.display()))
}

/// Write a sysfs attribute in one write(2); returns the OS error on refusal.
pub fn write_attr(path: impl AsRef<Path>, value: &str) -> io::Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
}

/// An OS error as the kernel's errno: `Operation not permitted (EPERM, 1)`.
pub fn errno(e: &io::Error) -> String {
    const NAMES: [(i32, &str); 14] = [
        (libc::EPERM, "EPERM"),
        (libc::ENOENT, "ENOENT"),
        (libc::EIO, "EIO"),
        (libc::ENXIO, "ENXIO"),
        (libc::EAGAIN, "EAGAIN"),
        (libc::EACCES, "EACCES"),
        (libc::EBUSY, "EBUSY"),
        (libc::ENODEV, "ENODEV"),
        (libc::EINVAL, "EINVAL"),
        (libc::ENOTTY, "ENOTTY"),
        (libc::ENOSPC, "ENOSPC"),
        (libc::EOPNOTSUPP, "EOPNOTSUPP"),
        (libc::ETIMEDOUT, "ETIMEDOUT"),
        (libc::EEXIST, "EEXIST"),
    ];
    let Some(n) = e.raw_os_error() else {
        return e.to_string();
    };
    let desc = io::Error::from_raw_os_error(n).to_string();
    let desc = desc.split(" (os error").next().unwrap_or(&desc);
    match NAMES.iter().find(|x| x.0 == n) {
        Some((_, name)) => format!("{desc} ({name}, {n})"),
        None => format!("{desc} (errno {n})"),
    }
}

/// Names in a directory, sorted.
pub fn list_dir(path: impl AsRef<Path>) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(path)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Final path component of a symlink target (e.g. the driver of a device).
pub fn link_name(path: impl AsRef<Path>) -> Option<String> {
    fs::read_link(path)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

pub fn canonical(path: impl AsRef<Path>) -> Option<PathBuf> {
    fs::canonicalize(path).ok()
}

/// Write `bytes` to a PCI config file at `off` (the kernel performs the access with
/// the matching width for 1/2/4-byte aligned writes).
pub fn config_write(bdf: &str, off: u64, bytes: &[u8]) -> Result<(), String> {
    let p = format!("{PCI_DEVICES}/{bdf}/config");
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .map_err(|e| format!("open {p}: {e}"))?;
    let n = f
        .write_at(bytes, off)
        .map_err(|e| format!("write {p} at {off:#x}: {e}"))?;
    if n != bytes.len() {
        return Err(format!("write {p} at {off:#x}: short write {n}"));
    }
    Ok(())
}

/// The running kernel's version (major, minor), from its release string.
pub fn kernel_version() -> Option<(u32, u32)> {
    parse_kernel_version(&fs::read_to_string("/proc/sys/kernel/osrelease").ok()?)
}

/// (major, minor) of a release such as `7.2.13+deb14-amd64` or `7.3.0-rc7`.
pub fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.trim().split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Sum of the per-CPU counts of the /proc/interrupts line whose action names
/// contain `name` and, with `bdf`, whose interrupt domain is that PCI function's
/// (`PCI-MSIX-<bdf>`, `PCI-MSI-<bdf>`: with several accelerators, each one's
/// vectors carry the same action names).
pub fn irq_count(interrupts: &str, name: &str, bdf: Option<&str>) -> Option<u64> {
    interrupts.lines().find_map(|l| {
        let (irq, rest) = l.split_once(':')?;
        let mut words = rest.split_whitespace();
        if irq.trim().is_empty()
            || !words.clone().any(|w| w.trim_end_matches(',') == name)
            || bdf.is_some_and(|b| !words.any(|w| w.ends_with(&format!("-{b}"))))
        {
            return None;
        }
        Some(
            rest.split_whitespace()
                .map_while(|w| w.parse::<u64>().ok())
                .sum(),
        )
    })
}

/// The count of interrupt `name` of the PCI function `bdf` (see [`irq_count`]).
pub fn read_irq_count(name: &str, bdf: &str) -> Result<u64, String> {
    let s = fs::read_to_string("/proc/interrupts").map_err(|e| format!("/proc/interrupts: {e}"))?;
    irq_count(&s, name, Some(bdf))
        .ok_or_else(|| format!("no {name:?} line of {bdf} in /proc/interrupts"))
}

/// Decode one /proc/self/pagemap entry: the page frame number if present.
/// Bit 63 present, bit 62 swapped, bits 54:0 PFN (zero without CAP_SYS_ADMIN).
pub fn pagemap_pfn(entry: u64) -> Result<u64, String> {
    if entry & (1 << 63) == 0 {
        return Err(format!("page not present (entry {entry:#x})"));
    }
    if entry & (1 << 62) != 0 {
        return Err("page swapped out".into());
    }
    let pfn = entry & ((1 << 55) - 1);
    if pfn == 0 {
        return Err("PFN reads 0 (pagemap needs CAP_SYS_ADMIN)".into());
    }
    Ok(pfn)
}

/// Physical address of a virtual address of this process.
pub fn virt_to_phys(va: usize) -> Result<u64, String> {
    let page = page_size();
    let f = fs::File::open("/proc/self/pagemap").map_err(|e| format!("pagemap: {e}"))?;
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, (va / page * 8) as u64)
        .map_err(|e| format!("pagemap read: {e}"))?;
    let pfn = pagemap_pfn(u64::from_le_bytes(b))?;
    Ok(pfn * page as u64 + (va % page) as u64)
}

pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// Names of loaded modules (first column of /proc/modules).
pub fn loaded_modules() -> Vec<String> {
    fs::read_to_string("/proc/modules")
        .map(|s| {
            s.lines()
                .filter_map(|l| l.split_whitespace().next().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn tool(name: &str) -> String {
    for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = format!("{d}/{name}");
        if Path::new(&p).exists() {
            return p;
        }
    }
    name.to_string()
}

/// Run a command; Ok(stdout) on exit 0, else Err with status and stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(tool(cmd))
        .args(args)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn modprobe(module: &str, params: &[String]) -> Result<(), String> {
    let mut args = vec![module];
    args.extend(params.iter().map(String::as_str));
    run("modprobe", &args).map(|_| ())
}

/// Sleep helper.
pub fn sleep_ms(ms: u64) {
    std::thread::sleep(std::time::Duration::from_millis(ms));
}

/// Poll `f` every 50 ms for up to `ms`; returns its last value.
pub fn wait_for<T>(ms: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(ms);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        sleep_ms(50);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERRUPTS: &str = "           CPU0       CPU1
  0:         40          0   IO-APIC   2-edge      timer
 24:          0          0  PCI-MSIX-0000:0d:00.0    0-edge      cxl_accel_mbox
 25:          0          0  PCI-MSIX-0000:0d:00.0    1-edge      cxl_accel_event
 26:          3          2  PCI-MSIX-0000:0d:00.0    2-edge      cxl_accel_dma
NMI:          0          0   Non-maskable interrupts
ERR:          0
";

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel_version("7.2.13+deb14-amd64\n"), Some((7, 2)));
        assert_eq!(parse_kernel_version("7.3.4"), Some((7, 3)));
        assert_eq!(parse_kernel_version("6.12.117+deb13-amd64"), Some((6, 12)));
        assert_eq!(parse_kernel_version("7.3-rc7"), Some((7, 3)));
        assert_eq!(parse_kernel_version("x"), None);
        assert!(Some((7, 2)) < Some((7, 3)) && (6, 12) < (7, 3));
    }

    #[test]
    fn interrupts() {
        assert_eq!(irq_count(INTERRUPTS, "cxl_accel_dma", None), Some(5));
        assert_eq!(irq_count(INTERRUPTS, "cxl_accel_mbox", None), Some(0));
        assert_eq!(irq_count(INTERRUPTS, "cxl_accel", None), None);
        assert_eq!(irq_count(INTERRUPTS, "timer", None), Some(40));
        assert_eq!(irq_count("", "x", None), None);
        // per function: the second accelerator's vector of the same name
        let two = format!(
            "{INTERRUPTS} 30:          7          1  PCI-MSIX-0000:19:00.0    2-edge      cxl_accel_dma\n"
        );
        assert_eq!(
            irq_count(&two, "cxl_accel_dma", Some("0000:0d:00.0")),
            Some(5)
        );
        assert_eq!(
            irq_count(&two, "cxl_accel_dma", Some("0000:19:00.0")),
            Some(8)
        );
        assert_eq!(irq_count(&two, "cxl_accel_dma", Some("0000:0d:00")), None);
        assert_eq!(irq_count(&two, "timer", Some("0000:0d:00.0")), None);
    }

    #[test]
    fn errno_names_the_error() {
        let e = io::Error::from_raw_os_error(libc::EPERM);
        assert_eq!(errno(&e), "Operation not permitted (EPERM, 1)");
        let e = io::Error::from_raw_os_error(libc::EAGAIN);
        assert_eq!(errno(&e), "Resource temporarily unavailable (EAGAIN, 11)");
        let e = io::Error::from_raw_os_error(libc::E2BIG);
        assert_eq!(errno(&e), "Argument list too long (errno 7)");
        assert_eq!(errno(&io::Error::other("plain")), "plain");
    }

    #[test]
    fn pagemap() {
        assert_eq!(pagemap_pfn((1 << 63) | 0x1234).unwrap(), 0x1234);
        assert!(pagemap_pfn(0x1234).unwrap_err().contains("not present"));
        assert!(pagemap_pfn(1 << 63).unwrap_err().contains("CAP_SYS_ADMIN"));
        assert!(pagemap_pfn((1 << 63) | (1 << 62) | 5).is_err());
        // flags above the PFN field are masked off
        assert_eq!(
            pagemap_pfn((1 << 63) | (1 << 56) | (1 << 55) | 7).unwrap(),
            7
        );
    }

    #[test]
    fn virt_to_phys_of_own_page() {
        // As root, a touched page resolves; unprivileged, the PFN is hidden.
        let v = vec![1u8; 4096];
        match virt_to_phys(v.as_ptr() as usize) {
            Ok(pa) => assert_eq!(pa % 4096, v.as_ptr() as u64 % 4096),
            Err(e) => assert!(e.contains("CAP_SYS_ADMIN"), "{e}"),
        }
    }
}
