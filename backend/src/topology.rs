//! The QEMU machines cxl-accel runs in: one generator of the QEMU arguments for every
//! CXL topology. `cxl-accel-backend qemu-args` prints them (scripts/run-vm and
//! scripts/bench read them from there), `--print-qemu-args` prints the `direct` one
//! for the daemon's own socket, and the README shows that output.
//!
//! Every topology hangs off one or two CXL host bridges (`pxb-cxl`, an ACPI0016 host
//! bridge with a CHBS in the CEDT, CXL r3.1 §9.18.1.2), each the target of a CXL Fixed
//! Memory Window of its own (CFMWS, §9.18.1.3) of one interleave way. Windows are not
//! interleaved across host bridges: a Type-2 device's memory belongs to its own
//! accelerator, the kernel attaches one region per accelerator (its endpoint decoder
//! committed by firmware, `devm_cxl_probe_mem`), and a window interleaved across two
//! host bridges could only hold a region whose lines alternate between two
//! accelerators, which no Type-2 driver owns. With one window per host bridge, each
//! device's decoders match a window of one way, as the kernel's auto-assembly needs.
//!
//! The host bridges keep `hdm_for_passthrough=on`: with one root port a host bridge
//! would otherwise get the kernel's pass-through decoder, which never matches a
//! region that firmware committed.
//!
//! Each host bridge is also a generic port (`acpi-generic-port`: an SRAT Generic
//! Port Affinity Structure, ACPI 6.5 §5.2.16.7) on a NUMA node of its own, with HMAT
//! latency and bandwidth from the CPU (ACPI 6.5 §5.2.28.4): Linux adds those figures
//! to a device's CDAT figures to compute the QoS class of its memory, and computes
//! none without them. Guest RAM is node 0.

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

use crate::config::human_size;

/// Errors of the generator.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TopologyError {
    #[error("unknown topology {0:?} (one of: {names})", names = Topology::names().join(", "))]
    Unknown(String),
    #[error("topology {topology} has {want} accelerator(s): give {want} socket(s), not {got}")]
    SocketCount {
        topology: Topology,
        want: usize,
        got: usize,
    },
    #[error("{what} {size:#x} is not a non-zero multiple of 256 MiB")]
    Size { what: &'static str, size: u64 },
    #[error("device property {0:?} is not KEY=JSON (a JSON value, e.g. x-cxl-mem=true)")]
    DeviceProp(String),
    #[error("device property key {0:?} is one the generator sets itself")]
    ReservedProp(String),
    #[error("window restrictions {0:#x} do not fit the CFMWS's 16 bits")]
    Restrictions(u64),
}

/// The topologies. Each places the accelerators (`vfio-user-pci`, one backend
/// each) and, for `with-type3` and `type3-only`, QEMU's in-process `cxl-type3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One accelerator directly under root port 0 of one host bridge.
    Direct,
    /// A CXL switch (`cxl-upstream` on the root port, one `cxl-downstream` port)
    /// between the root port and the accelerator (CXL r3.1 §7.7).
    Switch,
    /// Two accelerators on root ports 0 and 1 of one host bridge.
    TwoDevices,
    /// Two host bridges, each with one root port and one accelerator.
    TwoHostBridges,
    /// An accelerator on root port 0 and a `cxl-type3` memory expander on root
    /// port 1 of the same host bridge.
    WithType3,
    /// Only a `cxl-type3` on root port 0 (the benchmark's comparison machine).
    Type3Only,
}

const ALL: [Topology; 6] = [
    Topology::Direct,
    Topology::Switch,
    Topology::TwoDevices,
    Topology::TwoHostBridges,
    Topology::WithType3,
    Topology::Type3Only,
];

impl Topology {
    pub fn name(self) -> &'static str {
        match self {
            Topology::Direct => "direct",
            Topology::Switch => "switch",
            Topology::TwoDevices => "two-devices",
            Topology::TwoHostBridges => "two-host-bridges",
            Topology::WithType3 => "with-type3",
            Topology::Type3Only => "type3-only",
        }
    }

    pub fn names() -> Vec<&'static str> {
        ALL.iter().map(|t| t.name()).collect()
    }

    pub fn parse(s: &str) -> Result<Self, TopologyError> {
        ALL.iter()
            .copied()
            .find(|t| t.name() == s)
            .ok_or_else(|| TopologyError::Unknown(s.to_string()))
    }

    /// How many accelerators (backends) it holds.
    pub fn accelerators(self) -> usize {
        match self {
            Topology::TwoDevices | Topology::TwoHostBridges => 2,
            Topology::Type3Only => 0,
            Topology::Direct | Topology::Switch | Topology::WithType3 => 1,
        }
    }

    /// Whether it holds a `cxl-type3`.
    pub fn has_type3(self) -> bool {
        matches!(self, Topology::WithType3 | Topology::Type3Only)
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

const GRANULE: u64 = 256 << 20;
/// The window size of the known-good machine: 4 GiB per host bridge.
pub const DEFAULT_WINDOW: u64 = 4 << 30;
/// The cxl-type3's volatile memory.
pub const DEFAULT_TYPE3_SIZE: u64 = 512 << 20;
/// HMAT figures from the CPU (initiator, node 0): to guest RAM, and to each host
/// bridge's generic port; the kernel adds the latter to the device's CDAT figures.
const RAM_LATENCY_NS: u32 = 80;
const RAM_BANDWIDTH: &str = "20G";
const GENERIC_PORT_LATENCY_NS: u32 = 50;
const GENERIC_PORT_BANDWIDTH: &str = "64G";

/// What varies between runs of one topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub topology: Topology,
    /// The vfio-user socket of each accelerator, in placement order (host bridge,
    /// then root port): accelerator i is the i-th function of its vendor and device id
    /// in bus order.
    pub sockets: Vec<PathBuf>,
    /// Size of each host bridge's window.
    pub window: u64,
    /// Volatile memory of the cxl-type3, if the topology has one.
    pub type3_size: u64,
    /// QEMU accelerator (`tcg`, `kvm`) for `-machine`, if given.
    pub accel: Option<String>,
    /// Extra properties of every `vfio-user-pci`, as JSON values (e.g. the patched
    /// QEMU's `x-cxl-mem`).
    pub device_props: Vec<(String, serde_json::Value)>,
    /// Window Restrictions of every window (CXL r3.1 §9.18.1.3), where the QEMU
    /// takes them (the patched one); QEMU's default otherwise.
    pub fmw_restrictions: Option<u16>,
}

impl Machine {
    pub fn new(topology: Topology, sockets: Vec<PathBuf>) -> Self {
        Self {
            topology,
            sockets,
            window: DEFAULT_WINDOW,
            type3_size: DEFAULT_TYPE3_SIZE,
            accel: None,
            device_props: Vec::new(),
            fmw_restrictions: None,
        }
    }

    /// Add a `KEY=JSON` property to every accelerator's `-device`.
    pub fn add_device_prop(&mut self, kv: &str) -> Result<(), TopologyError> {
        let (k, v) = kv
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| TopologyError::DeviceProp(kv.to_string()))?;
        if ["driver", "id", "bus", "socket"].contains(&k) {
            return Err(TopologyError::ReservedProp(k.to_string()));
        }
        let v: serde_json::Value =
            serde_json::from_str(v).map_err(|_| TopologyError::DeviceProp(kv.to_string()))?;
        self.device_props.push((k.to_string(), v));
        Ok(())
    }

    fn validate(&self) -> Result<(), TopologyError> {
        let want = self.topology.accelerators();
        if self.sockets.len() != want {
            return Err(TopologyError::SocketCount {
                topology: self.topology,
                want,
                got: self.sockets.len(),
            });
        }
        for (what, size) in [("window", self.window), ("type3 size", self.type3_size)] {
            if size == 0 || !size.is_multiple_of(GRANULE) {
                return Err(TopologyError::Size { what, size });
            }
        }
        Ok(())
    }

    /// The QEMU arguments, grouped per option (each group is an option and its
    /// value): the machine, guest RAM (shared, so the device can DMA into it), the
    /// host bridges, ports, devices and windows. Callers add the CPU, kernel and
    /// console.
    pub fn groups(&self) -> Result<Vec<Vec<String>>, TopologyError> {
        self.validate()?;
        let mut g: Vec<Vec<String>> = Vec::new();
        let opt = |g: &mut Vec<Vec<String>>, o: &str, v: String| g.push(vec![o.to_string(), v]);
        let accel = self
            .accel
            .as_ref()
            .map(|a| format!(",accel={a}"))
            .unwrap_or_default();
        opt(&mut g, "-machine", format!("q35,cxl=on{accel},hmat=on"));
        opt(&mut g, "-m", "1G,maxmem=4G,slots=4".into());
        opt(
            &mut g,
            "-object",
            "memory-backend-memfd,id=ram0,size=1G,share=on".into(),
        );
        opt(
            &mut g,
            "-numa",
            "node,nodeid=0,cpus=0,memdev=ram0,initiator=0".into(),
        );
        let host_bridges: &[&str] = if self.topology == Topology::TwoHostBridges {
            &["cxl.1", "cxl.2"]
        } else {
            &["cxl.1"]
        };
        // Guest RAM is node 0; host bridge i's generic port is node i + 1.
        let mut hmat = vec![(0, RAM_LATENCY_NS, RAM_BANDWIDTH)];
        for node in 1..=host_bridges.len() {
            opt(&mut g, "-numa", format!("node,nodeid={node}"));
            hmat.push((node, GENERIC_PORT_LATENCY_NS, GENERIC_PORT_BANDWIDTH));
        }
        for (node, latency, bandwidth) in hmat {
            let lb = format!("hmat-lb,initiator=0,target={node},hierarchy=memory");
            opt(
                &mut g,
                "-numa",
                format!("{lb},data-type=access-latency,latency={latency}"),
            );
            opt(
                &mut g,
                "-numa",
                format!("{lb},data-type=access-bandwidth,bandwidth={bandwidth}"),
            );
        }
        // Host bridge i (bus number, id) and its generic port.
        let hb = |g: &mut Vec<Vec<String>>, i: usize, bus_nr: u32| {
            let id = host_bridges.get(i).copied().unwrap_or("cxl.1");
            opt(
                g,
                "-device",
                format!("pxb-cxl,bus_nr={bus_nr},bus=pcie.0,id={id},hdm_for_passthrough=on"),
            );
            opt(
                g,
                "-object",
                format!(
                    "acpi-generic-port,id=gp{i},pci-bus={id},node={}",
                    i.saturating_add(1)
                ),
            );
        };
        // Root port ids rpN, port numbers per host bridge, slots unique per chassis.
        let rp = |id: &str, port: u32, hb: &str, slot: u32| {
            format!("cxl-rp,port={port},bus={hb},id={id},chassis=0,slot={slot}")
        };
        let type3 = |bus: &str| format!("cxl-type3,bus={bus},volatile-memdev=t3mem,id=t3,sn=0x3");
        let type3_mem = format!(
            "memory-backend-ram,id=t3mem,size={}",
            human_size(self.type3_size)
        );
        let mut devices = self.sockets.iter().enumerate();
        let mut accel_dev = |bus: &str| -> String {
            // One socket per accelerator, checked by validate().
            let (i, path) = devices
                .next()
                .map(|(i, p)| (i, p.to_string_lossy().into_owned()))
                .unwrap_or_default();
            self.device_json(&format!("accel{i}"), bus, path)
        };
        hb(&mut g, 0, 12);
        opt(&mut g, "-device", rp("rp0", 0, "cxl.1", 2));
        match self.topology {
            Topology::Direct => {
                opt(&mut g, "-device", accel_dev("rp0"));
            }
            Topology::Switch => {
                opt(&mut g, "-device", "cxl-upstream,bus=rp0,id=us0".into());
                opt(
                    &mut g,
                    "-device",
                    "cxl-downstream,port=0,bus=us0,id=ds0,chassis=0,slot=4".into(),
                );
                opt(&mut g, "-device", accel_dev("ds0"));
            }
            Topology::TwoDevices => {
                opt(&mut g, "-device", accel_dev("rp0"));
                opt(&mut g, "-device", rp("rp1", 1, "cxl.1", 3));
                opt(&mut g, "-device", accel_dev("rp1"));
            }
            Topology::TwoHostBridges => {
                opt(&mut g, "-device", accel_dev("rp0"));
                hb(&mut g, 1, 24);
                opt(&mut g, "-device", rp("rp1", 0, "cxl.2", 3));
                opt(&mut g, "-device", accel_dev("rp1"));
            }
            Topology::WithType3 => {
                opt(&mut g, "-device", accel_dev("rp0"));
                opt(&mut g, "-device", rp("rp1", 1, "cxl.1", 3));
                opt(&mut g, "-object", type3_mem);
                opt(&mut g, "-device", type3("rp1"));
            }
            Topology::Type3Only => {
                opt(&mut g, "-object", type3_mem);
                opt(&mut g, "-device", type3("rp0"));
            }
        }
        let window = human_size(self.window);
        let fmw: Vec<String> = host_bridges
            .iter()
            .enumerate()
            .map(|(i, hb)| {
                let r = self
                    .fmw_restrictions
                    .map(|r| format!(",cxl-fmw.{i}.restrictions={r:#x}"))
                    .unwrap_or_default();
                format!("cxl-fmw.{i}.targets.0={hb},cxl-fmw.{i}.size={window}{r}")
            })
            .collect();
        opt(&mut g, "-M", fmw.join(","));
        Ok(g)
    }

    /// One accelerator's `-device` value: JSON, because the socket is an object.
    /// Written by hand to keep QEMU's conventional key order ("driver" first).
    fn device_json(&self, id: &str, bus: &str, path: String) -> String {
        let mut s = format!(
            r#"{{"driver":"vfio-user-pci","id":{},"bus":{},"socket":{{"type":"unix","path":{}}}"#,
            serde_json::Value::String(id.into()),
            serde_json::Value::String(bus.into()),
            serde_json::Value::String(path)
        );
        for (k, v) in &self.device_props {
            s.push_str(&format!(",{}:{v}", serde_json::Value::String(k.clone())));
        }
        s.push('}');
        s
    }

    /// The arguments as one flat list (argv).
    pub fn args(&self) -> Result<Vec<String>, TopologyError> {
        Ok(self.groups()?.into_iter().flatten().collect())
    }

    /// The arguments for a shell: one option per line, quoted where needed,
    /// continued with backslashes.
    pub fn shell_lines(&self) -> Result<String, TopologyError> {
        let lines: Vec<String> = self
            .groups()?
            .iter()
            .map(|grp| {
                grp.iter()
                    .map(|a| shell_word(a))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        Ok(lines.join(" \\\n") + "\n")
    }
}

/// A word for a POSIX shell: as it is when it holds only characters no shell treats
/// specially, else in single quotes.
pub fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.,=/:+@%".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn machine(t: Topology) -> Machine {
        let sockets = (0..t.accelerators())
            .map(|i| PathBuf::from(format!("/run/a{i}.sock")))
            .collect();
        Machine::new(t, sockets)
    }

    /// `-device` values parsed into (driver, properties): QEMU's key=value lists,
    /// or JSON.
    fn devices(args: &[String]) -> Vec<(String, serde_json::Map<String, serde_json::Value>)> {
        args.windows(2)
            .filter(|w| w[0] == "-device")
            .map(|w| {
                let v = &w[1];
                let map: serde_json::Map<String, serde_json::Value> = if v.starts_with('{') {
                    serde_json::from_str(v).unwrap()
                } else {
                    let mut parts = v.split(',');
                    let driver = parts.next().unwrap().to_string();
                    let mut m: serde_json::Map<_, _> = parts
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').unwrap();
                            (k.to_string(), serde_json::Value::String(v.to_string()))
                        })
                        .collect();
                    m.insert("driver".into(), driver.into());
                    m
                };
                (map["driver"].as_str().unwrap().to_string(), map)
            })
            .collect()
    }

    fn prop<'a>(m: &'a serde_json::Map<String, serde_json::Value>, k: &str) -> &'a str {
        m.get(k).and_then(|v| v.as_str()).unwrap_or("")
    }

    #[test]
    fn every_bus_a_device_names_exists_before_it() {
        for t in ALL {
            let args = machine(t).args().unwrap();
            let mut ids: HashSet<String> = HashSet::from(["pcie.0".to_string()]);
            for (driver, m) in devices(&args) {
                let bus = prop(&m, "bus");
                assert!(ids.contains(bus), "{t}: {driver} on unknown bus {bus:?}");
                if let Some(id) = m.get("id").and_then(|v| v.as_str()) {
                    assert!(ids.insert(id.to_string()), "{t}: id {id} twice");
                }
            }
        }
    }

    #[test]
    fn shapes_match_their_names() {
        let count = |t: Topology, driver: &str| {
            devices(&machine(t).args().unwrap())
                .iter()
                .filter(|(d, _)| d == driver)
                .count()
        };
        // (topology, host bridges, root ports, upstream, downstream, accelerators, type3)
        let want = [
            (Topology::Direct, 1, 1, 0, 0, 1, 0),
            (Topology::Switch, 1, 1, 1, 1, 1, 0),
            (Topology::TwoDevices, 1, 2, 0, 0, 2, 0),
            (Topology::TwoHostBridges, 2, 2, 0, 0, 2, 0),
            (Topology::WithType3, 1, 2, 0, 0, 1, 1),
            (Topology::Type3Only, 1, 1, 0, 0, 0, 1),
        ];
        for (t, hb, rp, us, ds, acc, t3) in want {
            let got = (
                count(t, "pxb-cxl"),
                count(t, "cxl-rp"),
                count(t, "cxl-upstream"),
                count(t, "cxl-downstream"),
                count(t, "vfio-user-pci"),
                count(t, "cxl-type3"),
            );
            assert_eq!(got, (hb, rp, us, ds, acc, t3), "{t}");
            assert_eq!(t.accelerators(), acc, "{t}");
            assert_eq!(t.has_type3(), t3 == 1, "{t}");
        }
    }

    #[test]
    fn switch_puts_the_device_below_the_downstream_port() {
        let d = devices(&machine(Topology::Switch).args().unwrap());
        let find = |drv: &str| d.iter().find(|(x, _)| x == drv).unwrap().1.clone();
        let us = find("cxl-upstream");
        let ds = find("cxl-downstream");
        let dev = find("vfio-user-pci");
        assert_eq!(prop(&us, "bus"), "rp0");
        assert_eq!(prop(&ds, "bus"), prop(&us, "id"));
        assert_eq!(prop(&dev, "bus"), prop(&ds, "id"));
    }

    #[test]
    fn one_window_per_host_bridge_of_one_way() {
        for t in ALL {
            let args = machine(t).args().unwrap();
            let hbs: Vec<String> = devices(&args)
                .into_iter()
                .filter(|(d, _)| d == "pxb-cxl")
                .map(|(_, m)| {
                    assert_eq!(prop(&m, "hdm_for_passthrough"), "on", "{t}");
                    prop(&m, "id").to_string()
                })
                .collect();
            let m = args.iter().position(|a| a == "-M").unwrap();
            let fmw = &args[m + 1];
            for (i, hb) in hbs.iter().enumerate() {
                assert!(
                    fmw.contains(&format!("cxl-fmw.{i}.targets.0={hb},cxl-fmw.{i}.size=4G")),
                    "{t}: {fmw}"
                );
                assert!(
                    !fmw.contains(&format!("cxl-fmw.{i}.targets.1")),
                    "{t}: {fmw}"
                );
            }
            assert!(
                !fmw.contains(&format!("cxl-fmw.{}", hbs.len())),
                "{t}: {fmw}"
            );
        }
    }

    #[test]
    fn each_host_bridge_is_a_generic_port_on_a_node_with_hmat_figures() {
        for t in ALL {
            let args = machine(t).args().unwrap();
            let objs: Vec<&String> = args
                .windows(2)
                .filter(|w| w[0] == "-object" && w[1].starts_with("acpi-generic-port"))
                .map(|w| &w[1])
                .collect();
            let hbs = if t == Topology::TwoHostBridges { 2 } else { 1 };
            assert_eq!(objs.len(), hbs, "{t}");
            for (i, o) in objs.iter().enumerate() {
                let hb = format!("cxl.{}", i + 1);
                assert_eq!(
                    **o,
                    format!("acpi-generic-port,id=gp{i},pci-bus={hb},node={}", i + 1),
                    "{t}"
                );
                let numa: Vec<&String> = args
                    .windows(2)
                    .filter(|w| w[0] == "-numa")
                    .map(|w| &w[1])
                    .collect();
                assert!(numa.contains(&&format!("node,nodeid={}", i + 1)), "{t}");
                for dt in ["access-latency", "access-bandwidth"] {
                    assert!(
                        numa.iter()
                            .any(|n| n.contains(&format!("target={},", i + 1)) && n.contains(dt)),
                        "{t}: no {dt} for node {}",
                        i + 1
                    );
                }
            }
        }
    }

    #[test]
    fn restrictions_go_to_every_window() {
        let mut m = machine(Topology::TwoHostBridges);
        m.fmw_restrictions = Some(0x5);
        let args = m.args().unwrap();
        assert_eq!(
            args.last().unwrap(),
            "cxl-fmw.0.targets.0=cxl.1,cxl-fmw.0.size=4G,cxl-fmw.0.restrictions=0x5,\
             cxl-fmw.1.targets.0=cxl.2,cxl-fmw.1.size=4G,cxl-fmw.1.restrictions=0x5"
        );
    }

    #[test]
    fn sockets_land_in_order_with_props() {
        let mut m = machine(Topology::TwoHostBridges);
        m.add_device_prop("x-cxl-mem=true").unwrap();
        m.accel = Some("tcg".into());
        let args = m.args().unwrap();
        assert_eq!(args[1], "q35,cxl=on,accel=tcg,hmat=on");
        let accels: Vec<_> = devices(&args)
            .into_iter()
            .filter(|(d, _)| d == "vfio-user-pci")
            .collect();
        assert_eq!(accels[0].1["socket"]["path"], "/run/a0.sock");
        assert_eq!(accels[0].1["bus"], "rp0");
        assert_eq!(accels[1].1["socket"]["path"], "/run/a1.sock");
        assert_eq!(accels[1].1["bus"], "rp1");
        assert_eq!(accels[1].1["id"], "accel1");
        assert_eq!(accels[1].1["x-cxl-mem"], true);
    }

    #[test]
    fn refuses_bad_input() {
        let mut m = machine(Topology::TwoDevices);
        m.sockets.pop();
        assert_eq!(
            m.args().unwrap_err(),
            TopologyError::SocketCount {
                topology: Topology::TwoDevices,
                want: 2,
                got: 1
            }
        );
        let mut m = machine(Topology::Direct);
        m.window = 3 << 20;
        assert!(matches!(m.args(), Err(TopologyError::Size { .. })));
        assert!(m.add_device_prop("bus=\"x\"").is_err());
        assert!(m.add_device_prop("x-cxl-mem").is_err());
        assert!(m.add_device_prop("x-cxl-mem=tru").is_err());
        assert!(matches!(
            Topology::parse("star"),
            Err(TopologyError::Unknown(_))
        ));
        for n in Topology::names() {
            assert_eq!(Topology::parse(n).unwrap().name(), n);
        }
    }

    /// README "Run it beside QEMU" shows the generator's output: the lines after
    /// `qemu-system-x86_64 ...` up to the end of that code block.
    #[test]
    fn readme_example_is_the_generators_output() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("\nqemu-system-x86_64 -cpu max ")
            .expect("README has the QEMU example");
        let block = &readme[start + 1..];
        let block = &block[block.find('\n').unwrap() + 1..];
        let block = &block[..block.find("```").unwrap()];
        let mut m = Machine::new(Topology::Direct, vec!["/tmp/accel.sock".into()]);
        m.accel = Some("tcg".into());
        assert_eq!(block, m.shell_lines().unwrap());
    }

    #[test]
    fn shell_lines_quote_what_a_shell_would_split() {
        let m = Machine::new(Topology::Direct, vec!["/tmp/it's odd.sock".into()]);
        let s = m.shell_lines().unwrap();
        assert!(s.contains(r#"'{"driver":"vfio-user-pci","id":"accel0","bus":"rp0","socket":{"type":"unix","path":"/tmp/it'\''s odd.sock"}}'"#), "{s}");
        assert!(s.starts_with("-machine q35,cxl=on,hmat=on \\\n-m 1G,maxmem=4G,slots=4 \\\n"));
        assert_eq!(shell_word("a,b=c/d"), "a,b=c/d");
        assert_eq!(shell_word(""), "''");
    }
}
