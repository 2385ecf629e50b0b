//! a. PCI: the device, its place under a CXL root port (and switch), its DVSECs,
//! flit mode; with several accelerators, their places relative to each other.

use super::{need, Ctx, SwitchPorts};
use crate::config::{Flit, Topology};
use crate::pcicfg::{ConfigSpace, PCIE_TYPE_DOWNSTREAM, PCIE_TYPE_ROOT_PORT, PCIE_TYPE_UPSTREAM};
use crate::report::Reporter;
use crate::sys::{self, PCI_DEVICES};
use cxl_regs::dvsec::{self, flex_bus, register_locator as rl};
use cxl_regs::{layout, pci};

/// ACPI _HID of a CXL host bridge (CXL r3.1 §9.18.2).
const ACPI_CXL_HOST_BRIDGE: &str = "ACPI0016";

/// The PCI functions with this vendor and device id, in bus order.
pub fn discover(vendor: u16, device: u16) -> Vec<String> {
    let mut found: Vec<String> = sys::list_dir(PCI_DEVICES)
        .into_iter()
        .filter(|bdf| {
            let p = format!("{PCI_DEVICES}/{bdf}");
            sys::read_num(format!("{p}/vendor")).ok() == Some(vendor as u64)
                && sys::read_num(format!("{p}/device")).ok() == Some(device as u64)
        })
        .collect();
    found.sort();
    found
}

/// One port of a PCIe path: its sysfs name and config space.
struct Port {
    bdf: String,
    cs: ConfigSpace,
}

impl Port {
    fn open(dir: &std::path::Path) -> Result<Self, String> {
        let bdf = dir
            .file_name()
            .ok_or("no name")?
            .to_string_lossy()
            .into_owned();
        let b = std::fs::read(dir.join("config")).map_err(|e| format!("{bdf} config: {e}"))?;
        Ok(Self {
            bdf,
            cs: ConfigSpace::new(b),
        })
    }

    /// The port is of PCIe type `want` and carries the CXL Extensions DVSEC for
    /// Ports (CXL r3.1 §8.1.5), which root, upstream and downstream ports have.
    fn expect(&self, want: u8, what: &str) -> Result<(), String> {
        if self.cs.pcie_type() != Some(want) {
            return Err(format!(
                "{} is PCIe type {:?}, not a {what}",
                self.bdf,
                self.cs.pcie_type()
            ));
        }
        if self
            .cs
            .find_dvsec(dvsec::CXL_VENDOR_ID, dvsec::ID_EXTENSIONS_FOR_PORTS)
            .is_none()
        {
            return Err(format!(
                "{what} {} has no CXL Extensions DVSEC for Ports (id 3)",
                self.bdf
            ));
        }
        Ok(())
    }

    /// Port Number from Link Capabilities (PCIe r6 §7.5.3.6): the id the CXL core
    /// gives this port as a decoder target.
    fn port_number(&self) -> Result<u8, String> {
        let exp = self
            .cs
            .find_cap(pci::CAP_ID_EXP)
            .ok_or_else(|| format!("{} without PCIe cap", self.bdf))?;
        let lnkcap = self
            .cs
            .u32(exp + pci::EXP_LNKCAP)
            .ok_or_else(|| format!("{} LNKCAP", self.bdf))?;
        Ok((lnkcap >> pci::EXP_LNKCAP_PORT_SHIFT) as u8)
    }
}

pub fn run(ctx: &mut Ctx, rep: &mut Reporter) {
    let (v, d) = (ctx.cfg.vendor, ctx.cfg.device);
    let n = ctx.cfg.topology.devices();
    let which = if n > 1 {
        format!(" (accelerator {} of {n}, bus order)", ctx.index)
    } else {
        String::new()
    };
    rep.check(
        "a.1",
        &format!("device {v:04x}:{d:04x} present, class 0x120000{which}"),
        || {
            let found = discover(v, d);
            let bdf = match found.as_slice() {
                [] => return Err("no such PCI function".into()),
                f if f.len() != n => {
                    return Err(format!(
                        "{} functions match, topology {} has {n}: {f:?}",
                        f.len(),
                        ctx.cfg.topology
                    ))
                }
                f => f[ctx.index].clone(),
            };
            let class = sys::read_num(format!("{PCI_DEVICES}/{bdf}/class"))?;
            ctx.bdf = Some(bdf.clone());
            if class != layout::CLASS_CODE as u64 {
                return Err(format!("{bdf}: class {class:#08x}"));
            }
            Ok(bdf)
        },
    );

    rep.check("a.2", "config space readable (4096 bytes)", || {
        let p = format!("{}/config", ctx.dev_path()?);
        let b = std::fs::read(&p).map_err(|e| format!("{p}: {e}"))?;
        if b.len() != pci::CONFIG_SPACE_SIZE {
            return Err(format!("{p}: {} bytes (not root?)", b.len()));
        }
        let cs = ConfigSpace::new(b);
        // keep the snapshot even if a field below is wrong: later checks judge their
        // own fields
        ctx.dsn = cs.dsn();
        ctx.cs = Some(cs.clone());
        if cs.vendor() != Some(v) || cs.device() != Some(d) {
            return Err(format!("ids in config {:?}:{:?}", cs.vendor(), cs.device()));
        }
        if cs.class() != Some(layout::CLASS_CODE) {
            return Err(format!(
                "class code in config {:#08x}",
                cs.class().unwrap_or(0)
            ));
        }
        if cs.pcie_type() != Some(crate::pcicfg::PCIE_TYPE_ENDPOINT) {
            return Err(format!(
                "PCIe device/port type {:?}, expected endpoint",
                cs.pcie_type()
            ));
        }
        let caps: Vec<String> = cs
            .ext_caps()
            .iter()
            .map(|c| format!("{:#x}@{:#x}", c.1, c.0))
            .collect();
        Ok(format!("extended caps {}", caps.join(" ")))
    });

    let switch = ctx.cfg.topology.switch();
    rep.check(
        "a.3",
        if switch {
            "device sits under a CXL switch's downstream port, its upstream port under a CXL root port of a CXL host bridge"
        } else {
            "device sits under a CXL root port of a CXL host bridge"
        },
        || {
            let dev = ctx.dev_path()?;
            let real = sys::canonical(&dev).ok_or_else(|| format!("realpath {dev}"))?;
            let mut dir = real.parent().ok_or("no parent")?;
            let mut path = Vec::new();
            if switch {
                let dsp = Port::open(dir)?;
                dsp.expect(PCIE_TYPE_DOWNSTREAM, "switch downstream port")?;
                dir = dir.parent().ok_or("no switch upstream port")?;
                let usp = Port::open(dir)?;
                usp.expect(PCIE_TYPE_UPSTREAM, "switch upstream port")?;
                dir = dir.parent().ok_or("no root port")?;
                let dsp_port = dsp.port_number()?;
                path.push(format!("downstream port {} (port number {dsp_port})", dsp.bdf));
                path.push(format!("upstream port {}", usp.bdf));
                ctx.switch = Some(SwitchPorts {
                    usp: usp.bdf,
                    dsp: dsp.bdf,
                    dsp_port,
                });
            }
            let rp = Port::open(dir)?;
            rp.expect(PCIE_TYPE_ROOT_PORT, "root port")?;
            let port_number = rp.port_number()?;
            let hb_dir = dir.parent().ok_or("no host bridge")?;
            let hb = hb_dir
                .file_name()
                .ok_or("no hb name")?
                .to_string_lossy()
                .into_owned();
            if !hb.starts_with("pci") {
                return Err(format!("{hb} above root port {} is not a PCI host bridge", rp.bdf));
            }
            let hid = sys::read_attr(hb_dir.join("firmware_node/hid"))?;
            if hid != ACPI_CXL_HOST_BRIDGE {
                return Err(format!(
                    "host bridge {hb} has _HID {hid}, expected {ACPI_CXL_HOST_BRIDGE}"
                ));
            }
            let uid = sys::read_attr(hb_dir.join("firmware_node/uid"))
                .ok()
                .and_then(|u| crate::config::parse_u64(&u).ok());
            path.push(format!("root port {} (port number {port_number})", rp.bdf));
            ctx.root_port = Some(rp.bdf);
            ctx.port_number = Some(port_number);
            ctx.hb_uid = uid.map(|u| u as u32);
            ctx.host_bridge = Some(hb.clone());
            Ok(format!("{}, host bridge {hb} {hid} uid {uid:?}", path.join(", ")))
        },
    );

    rep.check(
        "a.4",
        "DVSECs 0, 7 and 8 (vendor 0x1E98) in config space",
        || {
            let cs = need(&ctx.cs, "config space (a.2)")?;
            let list = cs.dvsecs();
            let find = |id| cs.find_dvsec(dvsec::CXL_VENDOR_ID, id);
            ctx.dvsec_dev = find(dvsec::ID_CXL_DEVICE);
            ctx.dvsec_flex = find(dvsec::ID_FLEX_BUS_PORT);
            ctx.dvsec_regloc = find(dvsec::ID_REGISTER_LOCATOR);
            let desc: Vec<String> = list
                .iter()
                .map(|d| format!("{:#x}:{}@{:#x}", d.vendor, d.id, d.offset))
                .collect();
            match (ctx.dvsec_dev, ctx.dvsec_flex, ctx.dvsec_regloc) {
                (Some(_), Some(_), Some(_)) => Ok(desc.join(" ")),
                _ => Err(format!("found {}", desc.join(" "))),
            }
        },
    );

    rep.check(
        "a.5",
        "CXL Device DVSEC: Mem capable, Range 1 size = configured size",
        || {
            let cs = need(&ctx.cs, "config space (a.2)")?;
            let o = need(&ctx.dvsec_dev, "DVSEC id 0 (a.4)")?;
            let cap = cs.u16(o + dvsec::device::CAP).ok_or("cap")?;
            let hdm_count =
                (cap & dvsec::device::CAP_HDM_COUNT_MASK) >> dvsec::device::CAP_HDM_COUNT_SHIFT;
            let hi = cs
                .u32(o + dvsec::device::range_size_high(0))
                .ok_or("size hi")?;
            let lo = cs
                .u32(o + dvsec::device::range_size_low(0))
                .ok_or("size lo")?;
            let size = dvsec::device::range_addr(hi, lo);
            if cap & dvsec::device::CAP_MEM_CAPABLE == 0 {
                return Err(format!("capability {cap:#x}: Mem_Capable clear"));
            }
            if !(1..=2).contains(&hdm_count) {
                return Err(format!("HDM_Count {hdm_count}"));
            }
            if lo & dvsec::device::RANGE_MEM_INFO_VALID == 0 {
                return Err(format!("Range 1 Size Low {lo:#x}: Memory_Info_Valid clear"));
            }
            if size == 0 || !size.is_multiple_of(dvsec::device::RANGE_GRANULE) {
                return Err(format!(
                    "Range 1 size {size:#x} is not a non-zero multiple of 256 MiB"
                ));
            }
            ctx.capacity = Some(size);
            if size != ctx.cfg.size {
                return Err(format!(
                    "Range 1 size {size:#x}, configured {:#x}",
                    ctx.cfg.size
                ));
            }
            Ok(format!(
                "cap {cap:#06x}, HDM_Count {hdm_count}, size {size:#x}"
            ))
        },
    );

    let flit = ctx.cfg.flit;
    rep.check(
        "a.6",
        &format!("flit mode {flit}: PCIe LNKSTA2 bit 10 and Flex Bus status"),
        || {
            let cs = need(&ctx.cs, "config space (a.2)")?;
            let fb = need(&ctx.dvsec_flex, "Flex Bus DVSEC (a.4)")?;
            let exp = cs.find_cap(pci::CAP_ID_EXP).ok_or("no PCIe capability")?;
            let flags = cs.u16(exp + pci::EXP_FLAGS).ok_or("flags")?;
            let lnksta2 = cs.u16(exp + pci::EXP_LNKSTA2).ok_or("lnksta2")?;
            let st = cs.u16(fb + flex_bus::STATUS).ok_or("flex bus status")?;
            let mut errs = Vec::new();
            if flags & pci::EXP_FLAGS_FLIT_MODE_SUPPORTED == 0 {
                errs.push(format!(
                    "PCIe Capabilities {flags:#06x}: Flit Mode Supported clear"
                ));
            }
            if st & (flex_bus::CACHE | flex_bus::MEM) != flex_bus::CACHE | flex_bus::MEM {
                errs.push(format!(
                    "Flex Bus status {st:#06x}: Cache/Mem not both enabled"
                ));
            }
            let flit_bit = lnksta2 & pci::EXP_LNKSTA2_FLIT != 0;
            let vh68 = st & flex_bus::FLIT68_VH != 0;
            let (want_flit, want_68) = match flit {
                Flit::Flit256 => (true, false),
                Flit::Flit68 => (false, true),
            };
            if flit_bit != want_flit {
                errs.push(format!(
                    "LNKSTA2 {lnksta2:#06x}: Flit Mode Status {flit_bit}, want {want_flit}"
                ));
            }
            if vh68 != want_68 {
                errs.push(format!(
                    "Flex Bus status {st:#06x}: 68B Flit and VH {vh68}, want {want_68}"
                ));
            }
            if errs.is_empty() {
                Ok(format!("LNKSTA2 {lnksta2:#06x}, Flex Bus status {st:#06x}"))
            } else {
                Err(errs.join("; "))
            }
        },
    );

    let mailbox = ctx.cfg.mailbox;
    rep.check(
        "a.7",
        &format!(
            "Register Locator: component block in BAR0{}",
            if mailbox {
                ", memory-device block present"
            } else {
                ", no memory-device block (mailbox off)"
            }
        ),
        || {
            let cs = need(&ctx.cs, "config space (a.2)")?;
            let o = need(&ctx.dvsec_regloc, "Register Locator (a.4)")?;
            ctx.blocks = cs.register_blocks(o);
            let comp = ctx.blocks.iter().find(|b| b.1 == rl::BLOCK_COMPONENT);
            let memdev = ctx.blocks.iter().find(|b| b.1 == rl::BLOCK_MEMORY_DEVICE);
            let desc = format!("{:x?}", ctx.blocks);
            match comp {
                Some(&(bir, _, _)) if bir == layout::BAR_REGS => {}
                _ => return Err(format!("no component block in BAR0: {desc}")),
            }
            match (mailbox, memdev) {
                (true, Some(&(bir, _, _))) if bir == layout::BAR_REGS => Ok(desc),
                (false, None) => Ok(desc),
                _ => Err(format!("memory-device block vs mailbox={mailbox}: {desc}")),
            }
        },
    );

    let serial = ctx.cfg.serial;
    rep.check("a.8", "Device Serial Number capability", || {
        let _ = need(&ctx.cs, "config space (a.2)")?;
        let dsn = ctx.dsn.ok_or("no DSN extended capability")?;
        match serial {
            Some(s) if s != dsn => Err(format!("DSN {dsn:#x}, configured {s:#x}")),
            _ => Ok(format!("{dsn:#018x}")),
        }
    });
}

/// a.9, for topologies with more than one CXL device: the accelerators (and the
/// cxl-type3 of with-type3, group m) sit where the topology puts them.
pub fn placement(ctxs: &[Ctx], rep: &mut Reporter) {
    let Some(first) = ctxs.first() else { return };
    let topology = first.cfg.topology;
    let title = match topology {
        Topology::TwoDevices => {
            "the two accelerators sit on different root ports of one host bridge"
        }
        Topology::TwoHostBridges => "the two accelerators sit on different host bridges",
        Topology::Direct | Topology::Switch | Topology::WithType3 => return,
    };
    rep.check("a.9", title, || {
        let mut places = Vec::new();
        for c in ctxs {
            let hb = need(
                &c.host_bridge,
                &format!("host bridge of accelerator {} (a.3)", c.index),
            )?;
            let rp = need(
                &c.root_port,
                &format!("root port of accelerator {} (a.3)", c.index),
            )?;
            places.push((hb, rp));
        }
        let same_hb = places.windows(2).all(|w| w[0].0 == w[1].0);
        let same_rp = places.windows(2).any(|w| w[0].1 == w[1].1);
        let ok = match topology {
            Topology::TwoDevices => same_hb && !same_rp,
            _ => places.windows(2).all(|w| w[0].0 != w[1].0),
        };
        let desc: Vec<String> = places.iter().map(|(h, r)| format!("{r} on {h}")).collect();
        if ok {
            Ok(desc.join("; "))
        } else {
            Err(desc.join("; "))
        }
    });
}
