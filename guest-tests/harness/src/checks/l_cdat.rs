//! l. CDAT: the device's DOE mailbox and Coherent Device Attribute Table, as the
//! kernel reads them and as the harness reads them itself.
//!
//! Two parts. [`run_early`] runs after the firmware step and before any CXL module
//! loads: the PCI core's DOE discovery (sysfs `doe_features`), then the harness's
//! own DOE exchanges through the config file, which learn the table the device
//! serves. It also turns on the CXL core's debug messages of drivers/cxl/core/cdat.c,
//! the only place Linux 7.3 prints the figures it derives for an accelerator (the
//! region's access0/1 attributes appear only when memory is onlined, which a Type-2
//! region never is). [`run`] runs after the kernel has probed the endpoint: its
//! sysfs CDAT against the harness's copy, and the kernel's QoS figures against the
//! formula it applies.

use super::{need, Ctx};
use crate::doe::{Doe, SysfsConfig};
use crate::hmat::{self, Perf};
use crate::json;
use crate::pcicfg::ConfigSpace;
use crate::report::{NotPassed, Reporter};
use crate::sys::{self, CXL_DEVICES, PCI_DEVICES};
use cxl_regs::cdat::{self as c, dslbis, dsmas, hmat as hmat_type, sslbis};
use cxl_regs::le::{u16_at, u32_at, u64_at};
use cxl_regs::{doe as d, pci};

/// The dynamic debug switch for the CXL core's CDAT code (built in: CXL_BUS=y).
const DYNDBG: &str = "/sys/kernel/debug/dynamic_debug/control";
const DYNDBG_CDAT: &str = "file drivers/cxl/core/cdat.c +p";
/// The message `update_perf_entry` (drivers/cxl/core/cdat.c) prints per DSMAS.
const DSMAS_MSG: &str = "DSMAS: dpa:";

pub fn run_early(ctx: &mut Ctx, rep: &mut Reporter) {
    rep.check(
        "l.1",
        "DOE capability; the PCI core's discovery found Discovery and CXL Table Access",
        || {
            let cs = need(&ctx.cs, "config space (a.2)")?;
            let cap = cs
                .find_ext_cap(d::EXT_CAP_ID_DOE)
                .ok_or("no DOE extended capability (0x2e)")?;
            ctx.doe_cap = Some(cap);
            let dir = format!("{}/doe_features", ctx.dev_path()?);
            let features = sys::list_dir(&dir);
            for want in ["doe_discovery", "1e98:02"] {
                if !features.iter().any(|f| f == want) {
                    return Err(format!("{dir} lists {features:?}, not {want}"));
                }
            }
            Ok(format!(
                "DOE at {cap:#x}; doe_features {}",
                features.join(" ")
            ))
        },
    );

    rep.check(
        "l.2",
        "the CDAT read with our own DOE exchanges, before any CXL module loads",
        || {
            let cap = need(&ctx.doe_cap, "DOE capability (l.1)")?;
            let bdf = need(&ctx.bdf, "device (a.1)")?;
            let capacity = need(&ctx.capacity, "capacity (a.5)")?;
            if let Some(m) = sys::loaded_modules()
                .into_iter()
                .find(|m| m.starts_with("cxl_"))
            {
                return Err(format!("{m} is loaded already"));
            }
            let mut io = SysfsConfig::open(&bdf)?;
            let mut doe = Doe {
                io: &mut io,
                cap: cap as u64,
            };
            doe.abort()?;
            let protocols = doe.discover()?;
            let want = [
                (d::VENDOR_PCI_SIG, d::TYPE_DISCOVERY),
                (d::VENDOR_CXL, d::TYPE_TABLE_ACCESS),
            ];
            if protocols != want {
                return Err(format!("Discovery lists {protocols:x?}"));
            }
            let table = doe.read_cdat()?;
            let summary = check_table(&table, capacity)?;
            ctx.cdat = Some(table);
            // For l.4: the kernel's derived figures are debug messages.
            let dbg = match sys::write_attr(DYNDBG, DYNDBG_CDAT) {
                Ok(()) => "; cdat.c debug messages on",
                Err(_) => "; cdat.c debug messages unavailable",
            };
            Ok(format!("{summary}{dbg}"))
        },
    );
}

pub fn run(ctx: &mut Ctx, rep: &mut Reporter) {
    rep.check(
        "l.3",
        "endpoint's sysfs CDAT is byte for byte the table read over DOE",
        || {
            let table = need(&ctx.cdat, "CDAT read over DOE (l.2)")?;
            let id = need(&ctx.ep_id, "endpoint port (c.4)")?;
            let p = format!("{CXL_DEVICES}/endpoint{id}/CDAT");
            let sysfs = std::fs::read(&p).map_err(|e| format!("{p}: {e}"))?;
            if sysfs != table {
                let at = sysfs
                    .iter()
                    .zip(&table)
                    .position(|(a, b)| a != b)
                    .unwrap_or(sysfs.len().min(table.len()));
                return Err(format!(
                    "{p}: {} bytes, differs from the {} read over DOE at byte {at}",
                    sysfs.len(),
                    table.len()
                ));
            }
            Ok(format!("endpoint{id}/CDAT: {} bytes", sysfs.len()))
        },
    );

    let mut genport = None;
    rep.step(
        "l.4",
        if ctx.switch.is_some() {
            "the kernel's QoS figures: CDAT + switch (its CDAT's SSLBIS) + generic port + links (flit size over each)"
        } else {
            "the kernel's QoS figures: CDAT + generic port + link (flit size over the link)"
        },
        || {
            let table = need(&ctx.cdat, "CDAT read over DOE (l.2)")?;
            let uid = need(&ctx.hb_uid, "host bridge uid (a.3)")?;
            let memdev = need(&ctx.memdev, "memdev (c.3)")?;
            let qos_path = format!("{CXL_DEVICES}/{memdev}/ram/qos_class");
            let Some(gp) = generic_port(uid)? else {
                // Without a generic port the kernel has no host bridge figures
                // (cxl_endpoint_get_perf_coordinates fails) and sets no class.
                if std::path::Path::new(&qos_path).exists() {
                    return Err(format!("no generic port, yet {qos_path} exists").into());
                }
                return Ok(format!(
                    "no SRAT generic port for host bridge uid {uid}: no QoS class ({qos_path} absent)"
                ));
            };
            genport = Some(gp);
            let bdf = need(&ctx.bdf, "device (a.1)")?;
            let rp = need(&ctx.root_port, "root port (a.3)")?;
            let cdat = table_perf(&table)?;
            // The links up to the host bridge, nearest first (each flit's time on
            // the dport's link), and a switch's figures from its CDAT's SSLBIS for
            // the downstream port (drivers/cxl/core/cdat.c, cdat_sslbis_handler;
            // cxl_endpoint_get_perf_coordinates adds them per hop).
            let (links, sw) = match &ctx.switch {
                Some(s) => {
                    let id = need(&ctx.ep_id, "endpoint port (c.4)")?;
                    (
                        vec![Link::read(&bdf, &s.dsp)?, Link::read(&s.usp, &rp)?],
                        Some(switch_perf(id, s.dsp_port)?),
                    )
                }
                None => (vec![Link::read(&bdf, &rp)?], None),
            };
            let link_lat: u64 = links.iter().map(Link::latency_ns).sum();
            let link_bw = links.iter().map(Link::bandwidth).min().unwrap_or(0);
            let s = sw.unwrap_or_default();
            let formula = |link_lat: u64| Perf {
                read_latency: cdat.read_latency + s.read_latency + gp.read_latency + link_lat,
                write_latency: cdat.write_latency + s.write_latency + gp.write_latency + link_lat,
                read_bandwidth: min_known(&[
                    cdat.read_bandwidth,
                    s.read_bandwidth,
                    gp.read_bandwidth,
                    link_bw,
                ]),
                write_bandwidth: min_known(&[
                    cdat.write_bandwidth,
                    s.write_bandwidth,
                    gp.write_bandwidth,
                    link_bw,
                ]),
            };
            let want = formula(link_lat);
            let link = &links[0];
            // This device's message (several CXL devices print one each).
            let msg = crate::kmsg::Kmsg::open()?
                .read_new()
                .into_iter()
                .rfind(|m| m.contains(DSMAS_MSG) && m.contains(&format!(" {bdf}: ")))
                .unwrap_or_default();
            let (qos, got) = parse_dsmas_msg(&msg).ok_or_else(|| {
                format!("no kernel message {DSMAS_MSG:?} of {bdf} (dynamic debug on?)")
            })?;
            let via = match sw {
                Some(s) => format!(", switch {s:?}, links {link_lat} ns, {link_bw} MB/s"),
                None => String::new(),
            };
            if got != want {
                // Linux 7.2 adds each link's flit time in picoseconds, from the lane
                // speed alone, to figures in nanoseconds (drivers/cxl/core/pci.c,
                // cxl_pci_get_latency with pcie_link_speed_mbps; port.c,
                // add_latency); 7.3 takes the link's width and converts to ns.
                let ps: u64 = links.iter().map(Link::latency_ps_per_lane).sum();
                if sys::kernel_version().is_some_and(|v| v < (7, 3)) && got == formula(ps) {
                    return Err(NotPassed::KnownKernelIssue(format!(
                        "Linux < 7.3 adds the link's flit time in ps, from one lane's speed, \
                         to ns figures: read {} ns = CDAT {} + generic port {} + link {ps} \
                         (7.3: link {link_lat}, read {} ns); qos_class {qos}",
                        got.read_latency, cdat.read_latency, gp.read_latency, want.read_latency
                    )));
                }
                return Err(format!(
                    "kernel {got:?}, formula {want:?} (CDAT {cdat:?}, generic port {gp:?}, {}{via})",
                    link.describe()
                )
                .into());
            }
            let ram_qos = sys::read_attr(&qos_path)?;
            let root_qos = root_decoder_qos(ctx)?;
            if ram_qos != qos.to_string() || root_qos != ram_qos {
                return Err(format!(
                    "qos_class: kernel message {qos}, {qos_path} {ram_qos}, root decoder {root_qos}"
                )
                .into());
            }
            let switch = match sw {
                Some(s) => format!(" + switch {}", s.read_latency),
                None => String::new(),
            };
            let switch_bw = match sw {
                Some(s) => format!(", switch {}/{}", s.read_bandwidth, s.write_bandwidth),
                None => String::new(),
            };
            Ok(format!(
                "read {} ns = CDAT {}{switch} + generic port {} + link {link_lat}; write {} ns; \
                 bandwidth {}/{} MB/s = min(CDAT {}/{}{switch_bw}, generic port {}, link {link_bw}); {}; qos_class {qos}",
                got.read_latency,
                cdat.read_latency,
                gp.read_latency,
                got.write_latency,
                got.read_bandwidth,
                got.write_bandwidth,
                cdat.read_bandwidth,
                cdat.write_bandwidth,
                gp.read_bandwidth,
                link.describe()
            ))
        },
    );

    rep.check(
        "l.5",
        "`cxl list`: the region's qos_class_mismatch follows the generic port",
        || {
            let region = need(&ctx.region, "region (c.7)")?;
            let out = sys::run("cxl", &["list", "-R", "-D"])?;
            let j = json::parse(&out).map_err(|e| format!("cxl list: {e}: {out}"))?;
            let mut rs = Vec::new();
            json::find_objects(&j, "region", &region, &mut rs);
            rs.retain(|o| o.get("decoder").is_none());
            let [r] = rs.as_slice() else {
                return Err(format!("{} region objects {region}", rs.len()));
            };
            let mismatch = r.get("qos_class_mismatch").is_some();
            match (genport.is_some(), mismatch) {
                (true, false) => Ok(format!("{region}: no qos_class_mismatch")),
                (false, true) => Ok(format!(
                    "{region}: qos_class_mismatch, as expected without a generic port"
                )),
                (true, true) => Err(format!("{region}: qos_class_mismatch: {out}")),
                (false, false) => Err(format!(
                    "{region}: no qos_class_mismatch although the kernel set no QoS class"
                )),
            }
        },
    );
}

/// The table's own consistency, and that it describes the device's memory: header
/// Length, checksum, one DSMAS per handle covering DPA 0..capacity, DSLBIS for
/// read and write latency and bandwidth.
fn check_table(t: &[u8], capacity: u64) -> Result<String, String> {
    let len = u32_at(t, c::HDR_LENGTH).ok_or("shorter than a CDAT header")? as usize;
    if len != t.len() {
        return Err(format!("header Length {len}, {} bytes read", t.len()));
    }
    let sum = t.iter().fold(0u8, |s, b| s.wrapping_add(*b));
    if sum != 0 {
        return Err(format!("bytes sum to {sum:#04x}, not 0"));
    }
    let structs = structures(t)?;
    let ranges: Vec<(u64, u64)> = structs
        .iter()
        .filter(|s| s[c::ST_TYPE] == c::TYPE_DSMAS)
        .filter_map(|s| Some((u64_at(s, dsmas::DPA_BASE)?, u64_at(s, dsmas::DPA_LENGTH)?)))
        .collect();
    if ranges != [(0, capacity)] {
        return Err(format!(
            "DSMAS ranges {ranges:x?}, expected one 0+{capacity:#x}"
        ));
    }
    let mut types: Vec<u8> = structs
        .iter()
        .filter(|s| s[c::ST_TYPE] == c::TYPE_DSLBIS)
        .map(|s| s[dslbis::DATA_TYPE])
        .collect();
    types.sort_unstable();
    if types
        != [
            hmat_type::READ_LATENCY,
            hmat_type::WRITE_LATENCY,
            hmat_type::READ_BANDWIDTH,
            hmat_type::WRITE_BANDWIDTH,
        ]
    {
        return Err(format!("DSLBIS data types {types:?}"));
    }
    Ok(format!(
        "{} bytes, {} structures, sequence {}, DSMAS 0+{capacity:#x}",
        t.len(),
        structs.len(),
        u32_at(t, c::HDR_SEQUENCE).unwrap_or(0)
    ))
}

/// The structures after the header.
fn structures(t: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    let mut off = c::HEADER_LEN;
    while off < t.len() {
        let n = usize::from(u16_at(t, off + c::ST_LENGTH).ok_or("truncated structure")?);
        let s = t
            .get(off..off + n)
            .filter(|_| n >= c::STRUCT_HEADER_LEN)
            .ok_or_else(|| format!("structure at {off} of length {n}"))?;
        out.push(s);
        off += n;
    }
    Ok(out)
}

/// The CDAT's figures as the kernel reads a DSLBIS (drivers/cxl/core/cdat.c,
/// `cdat_normalize`): entry x base unit, latencies from ps to ns rounded up.
fn table_perf(t: &[u8]) -> Result<Perf, String> {
    let mut p = Perf::default();
    for s in structures(t)?
        .into_iter()
        .filter(|s| s[c::ST_TYPE] == c::TYPE_DSLBIS)
    {
        let base = u64_at(s, dslbis::ENTRY_BASE_UNIT).ok_or("DSLBIS")?;
        let entry = u64::from(u16_at(s, dslbis::ENTRY0).ok_or("DSLBIS")?);
        let v = entry * base;
        match s[dslbis::DATA_TYPE] {
            hmat_type::READ_LATENCY => p.read_latency = v.div_ceil(1000),
            hmat_type::WRITE_LATENCY => p.write_latency = v.div_ceil(1000),
            hmat_type::READ_BANDWIDTH => p.read_bandwidth = v,
            hmat_type::WRITE_BANDWIDTH => p.write_bandwidth = v,
            _ => {}
        }
    }
    Ok(p)
}

/// A switch's figures for its downstream port `dsp_port` (its Port Number), as the
/// kernel takes them from the SSLBIS of the switch's CDAT (CDAT r1.03 §3.2; drivers/
/// cxl/core/cdat.c, cdat_sslbis_handler): per data type, the first entry between the
/// upstream port (0x100) or any port (0xffff) and that port; values as for DSLBIS.
/// The CDAT is the switch port's as the kernel read it: sysfs CDAT of the CXL port
/// above `endpoint<ep>`.
fn switch_perf(ep: u32, dsp_port: u8) -> Result<Perf, String> {
    const US_PORT: u16 = 0x100;
    const ANY_PORT: u16 = 0xffff;
    let ep_path = sys::canonical(format!("{CXL_DEVICES}/endpoint{ep}"))
        .ok_or_else(|| format!("realpath endpoint{ep}"))?;
    let port = ep_path
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| n.starts_with("port"))
        .ok_or_else(|| format!("no switch port above endpoint{ep}"))?;
    let p = format!("{CXL_DEVICES}/{port}/CDAT");
    let t = std::fs::read(&p).map_err(|e| format!("{p}: {e}"))?;
    let mut perf = Perf::default();
    for s in structures(&t)?
        .into_iter()
        .filter(|s| s[c::ST_TYPE] == c::TYPE_SSLBIS)
    {
        let base = u64_at(s, sslbis::ENTRY_BASE_UNIT).ok_or("SSLBIS")?;
        let entries = s.get(sslbis::HEAD_LEN..).unwrap_or_default();
        let value = entries.chunks_exact(sslbis::ENTRY_LEN).find_map(|e| {
            let (x, y, v) = (u16_at(e, 0)?, u16_at(e, 2)?, u16_at(e, 4)?);
            let dsp = match (x, y) {
                (US_PORT, y) => y,
                (ANY_PORT, US_PORT) => x,
                (ANY_PORT, y) => y,
                (x, _) => x,
            };
            (dsp == ANY_PORT || dsp == u16::from(dsp_port)).then_some(u64::from(v))
        });
        let Some(entry) = value.filter(|&v| v != 0 && v != 0xffff) else {
            continue;
        };
        let v = entry * base;
        match s[sslbis::DATA_TYPE] {
            hmat_type::ACCESS_LATENCY => {
                perf.read_latency = v.div_ceil(1000);
                perf.write_latency = v.div_ceil(1000);
            }
            hmat_type::READ_LATENCY => perf.read_latency = v.div_ceil(1000),
            hmat_type::WRITE_LATENCY => perf.write_latency = v.div_ceil(1000),
            hmat_type::ACCESS_BANDWIDTH => {
                perf.read_bandwidth = v;
                perf.write_bandwidth = v;
            }
            hmat_type::READ_BANDWIDTH => perf.read_bandwidth = v,
            hmat_type::WRITE_BANDWIDTH => perf.write_bandwidth = v,
            _ => {}
        }
    }
    if perf.read_latency == 0
        || perf.write_latency == 0
        || perf.read_bandwidth == 0
        || perf.write_bandwidth == 0
    {
        return Err(format!(
            "{p}: SSLBIS gives downstream port {dsp_port} {perf:?}"
        ));
    }
    Ok(perf)
}

/// The host bridge's generic port figures from SRAT and HMAT, if it has one.
fn generic_port(uid: u32) -> Result<Option<Perf>, String> {
    let Ok(srat) = std::fs::read("/sys/firmware/acpi/tables/SRAT") else {
        return Ok(None);
    };
    let Some(gp) = hmat::srat_generic_ports(&srat)?
        .into_iter()
        .find(|g| g.enabled && g.hid == "ACPI0016" && g.uid == uid)
    else {
        return Ok(None);
    };
    let table = std::fs::read("/sys/firmware/acpi/tables/HMAT")
        .map_err(|e| format!("a generic port in SRAT but no HMAT: {e}"))?;
    let (revision, localities) = hmat::hmat_localities(&table)?;
    hmat::target_perf(revision, &localities, gp.domain)
        .map(Some)
        .ok_or_else(|| format!("HMAT has no figures for generic port domain {}", gp.domain))
}

/// The smallest of the non-zero figures (0 = not given).
fn min_known(v: &[u64]) -> u64 {
    v.iter().copied().filter(|&x| x != 0).min().unwrap_or(0)
}

/// The endpoint's link as Linux 7.3 sees it: speed, width and flit mode of the
/// root port (the dport), and the endpoint's own speed and width.
struct Link {
    speed: u16,
    width: u16,
    flit256: bool,
    ep_speed: u16,
    ep_width: u16,
}

impl Link {
    fn read(bdf: &str, rp: &str) -> Result<Self, String> {
        let lnk = |dev: &str| -> Result<(u16, u16, u16), String> {
            let p = format!("{PCI_DEVICES}/{dev}/config");
            let cs = ConfigSpace::new(std::fs::read(&p).map_err(|e| format!("{p}: {e}"))?);
            let exp = cs.find_cap(pci::CAP_ID_EXP).ok_or("no PCIe capability")?;
            let sta = cs.u16(exp + pci::EXP_LNKSTA).ok_or("LNKSTA")?;
            let sta2 = cs.u16(exp + pci::EXP_LNKSTA2).ok_or("LNKSTA2")?;
            Ok((
                sta & pci::EXP_LNKSTA_SPEED_MASK,
                (sta & pci::EXP_LNKSTA_WIDTH_MASK) >> pci::EXP_LNKSTA_WIDTH_SHIFT,
                sta2,
            ))
        };
        let (speed, width, sta2) = lnk(rp)?;
        let (ep_speed, ep_width, _) = lnk(bdf)?;
        Ok(Self {
            speed,
            width,
            flit256: sta2 & pci::EXP_LNKSTA2_FLIT != 0,
            ep_speed,
            ep_width,
        })
    }

    fn flit_bytes(&self) -> u64 {
        if self.flit256 {
            256
        } else {
            68
        }
    }

    /// The flit's time on the link, ns rounded up: flit bytes over the link's raw
    /// bandwidth (speed x width / 8, MB/s), in ps as `cxl_pci_get_latency`
    /// computes it. Measured on 7.3.4: +4 ns at 256B/32 GT/s x16, +2 ns at 68B,
    /// +8 ns at 16 GT/s x16 and at 32 GT/s x8.
    fn latency_ns(&self) -> u64 {
        let mbytes = raw_mbps(self.speed) * u64::from(self.width) / 8;
        if mbytes == 0 {
            return 0;
        }
        (self.flit_bytes() * 1_000_000 / mbytes).div_ceil(1000)
    }

    /// The flit's time on the link as Linux 7.2 adds it: picoseconds over one lane's
    /// raw bandwidth (`pcie_link_speed_mbps` / 8), not converted to ns.
    fn latency_ps_per_lane(&self) -> u64 {
        let mbytes = raw_mbps(self.speed) / 8;
        if mbytes == 0 {
            return 0;
        }
        self.flit_bytes() * 1_000_000 / mbytes
    }

    /// `pcie_bandwidth_available` of the endpoint, in MB/s: the narrowest of its
    /// link and the root port's, after line encoding.
    fn bandwidth(&self) -> u64 {
        let bw = |speed, width: u16| encoded_mbps(speed) * u64::from(width);
        bw(self.speed, self.width).min(bw(self.ep_speed, self.ep_width)) / 8
    }

    fn describe(&self) -> String {
        format!(
            "{}B flit, root port {} GT/s x{}",
            self.flit_bytes(),
            raw_mbps(self.speed) / 1000,
            self.width
        )
    }
}

/// Link Speed encodings (PCIe r6 §7.5.3.18, the Supported Link Speeds Vector bit
/// positions) in Mb/s per lane.
fn raw_mbps(speed: u16) -> u64 {
    match speed {
        1 => 2_500,
        2 => 5_000,
        3 => 8_000,
        4 => 16_000,
        5 => 32_000,
        6 => 64_000,
        _ => 0,
    }
}

/// The same after line encoding, as Linux's `PCIE_SPEED2MBS_ENC` rounds it:
/// 8b/10b up to 5 GT/s, 128b/130b from 8 to 32 GT/s, none in 64 GT/s flit mode.
fn encoded_mbps(speed: u16) -> u64 {
    match speed {
        1 | 2 => raw_mbps(speed) * 8 / 10,
        3..=5 => raw_mbps(speed) * 128 / 130,
        _ => raw_mbps(speed),
    }
}

/// `qos: Q read_bw: R write_bw W read_lat: RL write_lat: WL` of the kernel's
/// DSMAS message.
fn parse_dsmas_msg(msg: &str) -> Option<(i64, Perf)> {
    let field = |key: &str| -> Option<&str> {
        let rest = msg.split_once(key)?.1.trim_start();
        rest.split(|ch: char| ch.is_whitespace()).next()
    };
    let n = |key: &str| field(key)?.parse::<u64>().ok();
    Some((
        field("qos:")?.parse().ok()?,
        Perf {
            read_bandwidth: n("read_bw:")?,
            write_bandwidth: n("write_bw")?,
            read_latency: n("read_lat:")?,
            write_latency: n("write_lat:")?,
        },
    ))
}

/// The qos_class of the root decoder above the region.
fn root_decoder_qos(ctx: &Ctx) -> Result<String, String> {
    let region = need(&ctx.region, "region (c.7)")?;
    let real = sys::canonical(format!("{CXL_DEVICES}/{region}"))
        .ok_or_else(|| format!("realpath {region}"))?;
    let root = real.parent().ok_or("region without a parent")?;
    sys::read_attr(root.join("qos_class"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernels_dsmas_message() {
        // As 7.3.4 printed it with the default CDAT and QEMU's generic port.
        let msg = "cxl_accel_t2 0000:0d:00.0: DSMAS: dpa: [range 0x0000000000000000-0x000000001fffffff] qos: 0 read_bw: 51200 write_bw 51200 read_lat: 154 write_lat: 174";
        let (qos, p) = parse_dsmas_msg(msg).unwrap();
        assert_eq!(qos, 0);
        assert_eq!(
            p,
            Perf {
                read_latency: 154,
                write_latency: 174,
                read_bandwidth: 51200,
                write_bandwidth: 51200
            }
        );
        assert!(parse_dsmas_msg("DSMAS: dpa: [range] qos: x").is_none());
        assert!(parse_dsmas_msg("").is_none());
    }

    fn link(speed: u16, width: u16, flit256: bool) -> Link {
        Link {
            speed,
            width,
            flit256,
            ep_speed: 5,
            ep_width: 16,
        }
    }

    /// The figures 7.3.4 derived in QEMU with the root port trained to these
    /// links (the CDAT's 100 ns and the generic port's 50 ns taken off).
    #[test]
    fn link_latency_matches_what_the_kernel_derived() {
        assert_eq!(link(5, 16, true).latency_ns(), 4);
        assert_eq!(link(5, 16, false).latency_ns(), 2);
        assert_eq!(link(4, 16, true).latency_ns(), 8);
        assert_eq!(link(5, 8, true).latency_ns(), 8);
        assert_eq!(link(0, 16, true).latency_ns(), 0);
    }

    #[test]
    fn link_bandwidth_matches_what_the_kernel_derived() {
        assert_eq!(link(5, 16, true).bandwidth(), 63_014);
        assert_eq!(link(4, 16, true).bandwidth(), 31_506);
        assert_eq!(link(5, 8, true).bandwidth(), 31_507);
        // The endpoint's own link is the narrower one.
        let mut l = link(6, 32, true);
        l.ep_speed = 3;
        l.ep_width = 4;
        assert_eq!(l.bandwidth(), 7_876 * 4 / 8);
    }

    /// A table: header, DSMAS 0+`cap`, DSLBIS of `types`, checksum fixed.
    fn table(cap: u64, types: &[(u8, u64, u16)]) -> Vec<u8> {
        let mut t = vec![0u8; 16];
        let mut s = vec![0u8; 24];
        s[2] = 24;
        s[16..24].copy_from_slice(&cap.to_le_bytes());
        t.extend_from_slice(&s);
        for &(ty, base, entry) in types {
            let mut s = vec![0u8; 24];
            s[0] = 1;
            s[2] = 24;
            s[6] = ty;
            s[8..16].copy_from_slice(&base.to_le_bytes());
            s[16..18].copy_from_slice(&entry.to_le_bytes());
            t.extend_from_slice(&s);
        }
        let n = t.len() as u32;
        t[0..4].copy_from_slice(&n.to_le_bytes());
        let sum = t.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        t[5] = 0u8.wrapping_sub(sum);
        t
    }

    #[test]
    fn reads_a_tables_figures_and_checks_its_shape() {
        let all = [
            (1, 10, 10_000),
            (2, 1000, 121),
            (4, 1, 51_200),
            (5, 10, 3000),
        ];
        let t = table(512 << 20, &all);
        assert!(check_table(&t, 512 << 20).is_ok());
        assert_eq!(
            table_perf(&t).unwrap(),
            Perf {
                read_latency: 100,
                write_latency: 121,
                read_bandwidth: 51_200,
                write_bandwidth: 30_000
            }
        );
        assert!(check_table(&t, 256 << 20).unwrap_err().contains("DSMAS"));
        let short = table(512 << 20, &all[..3]);
        assert!(check_table(&short, 512 << 20)
            .unwrap_err()
            .contains("DSLBIS"));
        let mut bad = t.clone();
        bad[5] ^= 1;
        assert!(check_table(&bad, 512 << 20).unwrap_err().contains("sum"));
        assert!(check_table(&t[..20], 512 << 20).is_err());
        assert_eq!(min_known(&[0, 7, 3]), 3);
    }
}
