//! The report: every figure beside its anchor, its ratio and its target; a table on
//! stdout and results.json.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::{opt, Res, DMA_READ_TARGET};

/// `bench: <name> <value> <unit>` lines of the guest console.
fn guest_figures(console: &str) -> BTreeMap<String, f64> {
    console
        .lines()
        .filter_map(|l| {
            let rest = l.trim_end_matches('\r').split("bench: ").nth(1)?;
            let mut w = rest.split_whitespace();
            let name = w.next()?.to_string();
            let v: f64 = w.next()?.parse().ok()?;
            Some((name, v))
        })
        .collect()
}

fn read_json(path: &Path) -> Option<Value> {
    let s = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&s).ok()
}

/// vfio-user messages of `command` in a `ctl status` reply.
fn messages(status: &Value, command: &str) -> Option<f64> {
    status
        .pointer(&format!("/vfio_user/by_command/{command}"))
        .and_then(Value::as_f64)
        .or(Some(0.0))
        .filter(|_| status.get("vfio_user").is_some())
}

/// REGION_READ and REGION_WRITE messages in a `ctl status` reply.
fn region_messages(status: &Value) -> Option<f64> {
    Some(messages(status, "region_read")? + messages(status, "region_write")?)
}

/// Posted writes (no reply asked: no round trip) in a `ctl status` reply.
fn posted_writes(status: &Value) -> Option<f64> {
    status
        .pointer("/vfio_user/posted_writes")
        .and_then(Value::as_f64)
}

/// The CPU placements `scripts/bench` measures in: (key in file names, name).
const PLACEMENTS: [(&str, &str); 2] = [("one", "1 core"), ("two", "2 cores")];
/// The QEMUs of the trapped-access VMs: (key in file names, name).
const QEMUS: [(&str, &str); 2] = [("stock", "stock QEMU"), ("patched", "patched QEMU")];

/// System calls, wake-ups issued and context switches of a group of threads.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Counts {
    syscalls: f64,
    wakeups: f64,
    switches: f64,
}

impl Counts {
    fn add(&mut self, o: Counts, k: f64) {
        self.syscalls += k * o.syscalls;
        self.wakeups += k * o.wakeups;
        self.switches += k * o.switches;
    }
}

/// The thread groups of the report, in the order it names them: QEMU's vCPU
/// thread, QEMU's other threads, the backend; on the host, our client (or the
/// ping-pong's parent) and the server (the echo, or the backend).
const GROUPS: [&str; 6] = ["vCPU", "QEMU other", "backend", "client", "server", "other"];

/// The group of a thread of process `process` (a perf label) named `comm`.
fn thread_group(process: &str, comm: &str) -> &'static str {
    match process {
        "qemu" if comm.starts_with("CPU ") => GROUPS[0],
        "qemu" => GROUPS[1],
        "backend" => GROUPS[2],
        "client" => GROUPS[3],
        "server" => GROUPS[4],
        _ => GROUPS[5],
    }
}

/// A perf window's counts summed per thread group (see [`perf_json`]).
fn group_counts(window: &Value) -> Option<BTreeMap<&'static str, Counts>> {
    let mut out: BTreeMap<&'static str, Counts> = BTreeMap::new();
    for t in window.get("threads")?.as_array()? {
        let s = |k: &str| t.get(k).and_then(Value::as_str).unwrap_or("");
        let n = |k: &str| t.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        out.entry(thread_group(s("process"), s("comm")))
            .or_default()
            .add(
                Counts {
                    syscalls: n("syscalls"),
                    wakeups: n("wakeups"),
                    switches: n("switches"),
                },
                1.0,
            );
    }
    Some(out)
}

/// Per operation: (`window` - `baseline`) / `ops`, per thread group.
fn per_op(
    window: &Value,
    baseline: Option<&Value>,
    ops: f64,
) -> Option<BTreeMap<&'static str, Counts>> {
    if ops <= 0.0 {
        return None;
    }
    let mut out = group_counts(window)?;
    if let Some(b) = baseline {
        for (g, c) in group_counts(b)? {
            out.entry(g).or_default().add(c, -1.0);
        }
    }
    for c in out.values_mut() {
        *c = Counts {
            syscalls: c.syscalls / ops,
            wakeups: c.wakeups / ops,
            switches: c.switches / ops,
        };
    }
    Some(out)
}

/// "syscalls/switches/wake-ups per op: vCPU 5.0/2.0/1.0, backend ...".
fn counts_text(c: &Option<BTreeMap<&'static str, Counts>>, op: &str) -> String {
    let Some(c) = c else {
        return format!("no perf counts per {op}");
    };
    let groups: Vec<String> = GROUPS
        .iter()
        .filter_map(|g| Some((g, c.get(g)?)))
        .map(|(g, c)| format!("{g} {:.1}/{:.1}/{:.1}", c.syscalls, c.switches, c.wakeups))
        .collect();
    format!("syscalls/switches/wake-ups per {op}: {}", groups.join(", "))
}

fn counts_json(c: &Option<BTreeMap<&'static str, Counts>>) -> Value {
    match c {
        None => Value::Null,
        Some(c) => Value::Object(
            c.iter()
                .map(|(g, c)| {
                    (
                        g.to_string(),
                        json!({"syscalls": c.syscalls, "wakeups": c.wakeups, "switches": c.switches}),
                    )
                })
                .collect(),
        ),
    }
}

/// One row of the report.
struct Row {
    name: String,
    value: Option<f64>,
    unit: &'static str,
    anchor_name: String,
    anchor: Option<f64>,
    /// (ratio limit, true if the ratio must be at most the limit)
    target: Option<(f64, bool)>,
    note: String,
    /// Where the threads ran: "1 core", "2 cores" or "unpinned".
    placement: String,
    /// The QEMU of a VM figure.
    qemu: Option<&'static str>,
}

impl Row {
    /// A row with no target, no note, unpinned and no QEMU; set the rest with
    /// struct-update syntax.
    fn new(name: impl Into<String>, value: Option<f64>, unit: &'static str) -> Row {
        Row {
            name: name.into(),
            value,
            unit,
            anchor_name: String::new(),
            anchor: None,
            target: None,
            note: String::new(),
            placement: "unpinned".into(),
            qemu: None,
        }
    }
    fn vs(self, anchor_name: impl Into<String>, anchor: Option<f64>) -> Row {
        Row {
            anchor_name: anchor_name.into(),
            anchor,
            ..self
        }
    }
    fn at_most(self, limit: f64) -> Row {
        Row {
            target: Some((limit, true)),
            ..self
        }
    }
    fn at_least(self, limit: f64) -> Row {
        Row {
            target: Some((limit, false)),
            ..self
        }
    }
    fn note(self, note: impl Into<String>) -> Row {
        Row {
            note: note.into(),
            ..self
        }
    }
    fn placed(self, placement: &str, qemu: Option<&'static str>) -> Row {
        Row {
            placement: placement.into(),
            qemu,
            ..self
        }
    }
    fn ratio(&self) -> Option<f64> {
        match (self.value, self.anchor) {
            (Some(v), Some(a)) if a != 0.0 => Some(v / a),
            _ => None,
        }
    }
    fn holds(&self) -> Option<bool> {
        let (limit, at_most) = self.target?;
        let r = self.ratio()?;
        Some(if at_most { r <= limit } else { r >= limit })
    }
    /// The target as "<=1.5" or ">=0.8".
    fn target_text(&self) -> Option<String> {
        self.target
            .map(|(l, at_most)| format!("{}{l}", if at_most { "<=" } else { ">=" }))
    }
    fn json(&self) -> Value {
        json!({
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "anchor": self.anchor_name,
            "anchor_value": self.anchor,
            "ratio": self.ratio(),
            "target": self.target_text(),
            "holds": self.holds(),
            "placement": self.placement,
            "qemu": self.qemu,
            "note": self.note,
        })
    }
}

fn fmt_num(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

fn table(rows: &[Row]) -> String {
    let mut t = format!(
        "{:<46} {:>9} {:<5} {:<34} {:>9} {:>7} {:>6} {:>5}\n",
        "figure", "value", "unit", "anchor", "anchor", "ratio", "target", "holds"
    );
    for r in rows {
        let holds = match r.holds() {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        t.push_str(&format!(
            "{:<46} {:>9} {:<5} {:<34} {:>9} {:>7} {:>6} {:>5}\n",
            r.name,
            fmt_num(r.value),
            r.unit,
            if r.anchor_name.is_empty() {
                "-"
            } else {
                &r.anchor_name
            },
            fmt_num(r.anchor),
            r.ratio()
                .map(|x| format!("{x:.2}x"))
                .unwrap_or_else(|| "-".into()),
            r.target_text().unwrap_or_else(|| "-".into()),
            holds
        ));
        if !r.note.is_empty() {
            t.push_str(&format!("{:<8}{}\n", "", r.note));
        }
    }
    t
}

/// What one VM of the trapped-access runs (job `trap`) left in its folder.
struct TrapVm {
    g: BTreeMap<String, f64>,
    dir: PathBuf,
}

impl TrapVm {
    fn load(dir: PathBuf) -> Option<TrapVm> {
        let console = std::fs::read_to_string(dir.join("console.log")).ok()?;
        Some(TrapVm {
            g: guest_figures(&console),
            dir,
        })
    }
    fn fig(&self, k: &str) -> Option<f64> {
        self.g.get(k).copied()
    }
    fn status(&self, tag: &str) -> Option<Value> {
        read_json(&self.dir.join(format!("status-{tag}.json")))
    }
    /// `counter` per operation over counted phase `phase` (ops from `ops.<phase>`).
    fn per_op_counter(&self, phase: &str, counter: fn(&Value) -> Option<f64>) -> Option<f64> {
        let a = self.status(&format!("count-{phase}-start"))?;
        let b = self.status(&format!("count-{phase}-end"))?;
        let n = self.fig(&format!("ops.{phase}")).filter(|n| *n > 0.0)?;
        Some((counter(&b)? - counter(&a)?) / n)
    }
    /// Per-thread-group counts per operation of phase `phase`, the idle phase
    /// subtracted.
    fn perf(&self, phase: &str) -> Option<BTreeMap<&'static str, Counts>> {
        let w = read_json(&self.dir.join(format!("perf-count-{phase}.json")))?;
        let idle = read_json(&self.dir.join("perf-count-idle.json"));
        per_op(&w, idle.as_ref(), self.fig(&format!("ops.{phase}"))?)
    }
}

/// The rows of one trapped-access VM (QEMU `q`, placement `p`), its per-op counts
/// into `counts`. `stock` is the same placement's stock-QEMU VM, for the patched one.
fn trap_rows(
    vm: &TrapVm,
    (qk, qname): (&str, &'static str),
    pname: &str,
    floor: Option<f64>,
    stock: Option<&TrapVm>,
    counts: &mut Map<String, Value>,
) -> Vec<Row> {
    let tag = format!("[{qk}, {pname}]");
    let floor_name = format!("ping-pong floor [{pname}]");
    let place = |r: Row| r.placed(pname, Some(qname));
    let msgs = |phase| vm.per_op_counter(phase, region_messages);
    let posted = |phase| vm.per_op_counter(phase, posted_writes);
    let round_trips = |phase| Some(msgs(phase)? - posted(phase).unwrap_or(0.0));
    let perf_read = vm.perf("read");
    let perf_write = vm.perf("write");
    let perf_identify = vm.perf("identify");
    counts.insert(format!("trapped read {tag}"), counts_json(&perf_read));
    counts.insert(format!("write + read back {tag}"), counts_json(&perf_write));
    counts.insert(
        format!("mailbox Identify {tag}"),
        counts_json(&perf_identify),
    );
    let read = vm.fig("reg_read.backend");
    let write = vm.fig("reg_write.backend");
    let ident = vm.fig("mbox_identify.backend");
    let mut rows = vec![
        place(
            Row::new(format!("trapped read {tag}"), read, "ns")
                .vs(&floor_name, floor)
                .at_most(1.5)
                .note(format!(
                    "{} messages per read; {}",
                    fmt_num(msgs("read")),
                    counts_text(&perf_read, "read")
                )),
        ),
        place(
            Row::new(format!("trapped read vs cxl-type3 {tag}"), read, "ns")
                .vs("cxl-type3 read (same VM)", vm.fig("reg_read.type3")),
        ),
        place(
            Row::new(format!("write + read back {tag}"), write, "ns")
                .vs(&floor_name, floor)
                .note(format!(
                    "{} messages, {} posted, per write + read; {}",
                    fmt_num(msgs("write")),
                    fmt_num(posted("write")),
                    counts_text(&perf_write, "write + read")
                )),
        ),
        place(
            Row::new(format!("write + read back vs cxl-type3 {tag}"), write, "ns")
                .vs("cxl-type3 write + read back", vm.fig("reg_write.type3")),
        ),
        place(
            Row::new(format!("mailbox Identify {tag}"), ident, "ns")
                .vs(&floor_name, floor)
                .note(format!(
                    "{} messages, {} posted: {} round trips per Identify; {}",
                    fmt_num(msgs("identify")),
                    fmt_num(posted("identify")),
                    fmt_num(round_trips("identify")),
                    counts_text(&perf_identify, "Identify")
                )),
        ),
        place(
            Row::new(format!("mailbox Identify vs cxl-type3 {tag}"), ident, "ns")
                .vs(
                    "cxl-type3 Identify (same VM)",
                    vm.fig("mbox_identify.type3"),
                )
                .at_most(2.0),
        ),
    ];
    if qk == "patched" {
        rows.push(place(
            Row::new(
                format!("Identify round trips {tag}"),
                round_trips("identify"),
                "count",
            )
            .vs("target: 4 round trips", Some(4.0))
            .at_most(1.0),
        ));
        rows.push(place(
            Row::new(
                format!("mailbox Identify, patched vs stock [{pname}]"),
                ident,
                "ns",
            )
            .vs(
                format!("stock QEMU Identify [{pname}]"),
                stock.and_then(|s| s.fig("mbox_identify.backend")),
            )
            .at_most(0.5),
        ));
    }
    rows
}

pub(crate) fn report(args: &[String]) -> Res<()> {
    let dir = PathBuf::from(opt(args, "--dir").ok_or("--dir needed")?);
    let out_path = match opt(args, "--out") {
        Some(o) => PathBuf::from(o),
        None => dir
            .parent()
            .map(|p| p.join("results.json"))
            .unwrap_or_else(|| PathBuf::from("results.json")),
    };
    let host = |f: &str| read_json(&dir.join("host").join(f));
    let hv = |v: &Option<Value>, k: &str| v.as_ref().and_then(|v| v.get(k)).and_then(Value::as_f64);
    let mut rows = Vec::new();
    let mut counts = Map::new();
    let mut placements = Map::new();

    // The floor and the backend alone, per placement.
    let mut floors = BTreeMap::new();
    for (pk, pname) in PLACEMENTS {
        let pp = host(&format!("pingpong-{pk}.json"));
        let after = host(&format!("pingpong-after-{pk}.json"));
        let cl = host(&format!("client-{pk}.json"));
        if let Some(p) = pp.as_ref().and_then(|v| v.get("placement")) {
            placements.insert(format!("host {pname}"), p.clone());
        }
        let floor = hv(&pp, "pingpong_ns");
        floors.insert(pk, floor);
        let pp_counts = pp
            .as_ref()
            .and_then(|v| v.get("perf"))
            .and_then(|w| per_op(w, None, w.get("ops")?.as_f64()?));
        let cl_counts = cl
            .as_ref()
            .and_then(|v| v.get("perf"))
            .and_then(|w| per_op(w, None, w.get("ops")?.as_f64()?));
        counts.insert(
            format!("ping-pong floor [{pname}]"),
            counts_json(&pp_counts),
        );
        counts.insert(
            format!("backend alone: REGION_READ [{pname}]"),
            counts_json(&cl_counts),
        );
        rows.push(
            Row::new(format!("ping-pong floor [{pname}]"), floor, "ns")
                .note(format!(
                    "32-byte request, 36-byte reply; p10 {}, p90 {} ns; after the VMs {} ns; {} (server: the echo)",
                    fmt_num(hv(&pp, "pingpong_p10_ns")),
                    fmt_num(hv(&pp, "pingpong_p90_ns")),
                    fmt_num(hv(&after, "pingpong_ns")),
                    counts_text(&pp_counts, "round trip")
                ))
                .placed(pname, None),
        );
        rows.push(
            Row::new(
                format!("backend alone: REGION_READ [{pname}]"),
                hv(&cl, "backend_direct_read_ns"),
                "ns",
            )
            .vs(
                format!("ping-pong, interleaved [{pname}]"),
                hv(&cl, "pingpong_interleaved_ns"),
            )
            .at_most(1.2)
            .note(format!(
                "a client of our own, no QEMU; each read follows a round trip to an echo \
                 on the backend's CPU (the anchor); {} x the floor row; REGION_WRITE {} ns; \
                 {} (server: the backend)",
                fmt_num(
                    hv(&cl, "backend_direct_read_ns")
                        .zip(floor)
                        .map(|(r, f)| r / f)
                ),
                fmt_num(hv(&cl, "backend_direct_write_ns")),
                counts_text(&cl_counts, "read")
            ))
            .placed(pname, None),
        );
    }

    // The trapped accesses, per placement and QEMU.
    let mut guest = Map::new();
    for (pk, pname) in PLACEMENTS {
        let stock = TrapVm::load(dir.join(format!("vm-stock-{pk}")));
        for (qk, qname) in QEMUS {
            let vmdir = dir.join(format!("vm-{qk}-{pk}"));
            let Some(vm) = TrapVm::load(vmdir.clone()) else {
                continue;
            };
            if let Some(p) = read_json(&vmdir.join("placement.json")) {
                placements.insert(format!("{qk} {pname}"), p);
            }
            rows.extend(trap_rows(
                &vm,
                (qk, qname),
                pname,
                floors.get(pk).copied().flatten(),
                stock.as_ref(),
                &mut counts,
            ));
            guest.insert(format!("{qk} {pname}"), json!(vm.g));
        }
    }

    // Device memory (the unpinned VM, job `data`) and the host's other figures.
    let data_dir = dir.join("vm-data");
    let console = std::fs::read_to_string(data_dir.join("console.log")).unwrap_or_default();
    let g = guest_figures(&console);
    let gf = |k: &str| g.get(k).copied();
    guest.insert("data".into(), json!(g));
    let rss = |tag: &str| read_json(&data_dir.join(format!("rss-{tag}.json")));
    let dma = host("client-dma.json");
    let daemon = host("daemon.json");
    let ready: BTreeMap<String, f64> = std::fs::read_to_string(dir.join("ready.txt"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect();
    let mut ready_runs: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for l in std::fs::read_to_string(dir.join("ready-runs.txt"))
        .unwrap_or_default()
        .lines()
    {
        if let Some((k, v)) = l.split_once(' ') {
            if let Ok(v) = v.trim().parse() {
                ready_runs.entry(k.to_string()).or_default().push(v);
            }
        }
    }
    let runs_of = |k: &str| {
        ready_runs
            .get(k)
            .map(|v| {
                v.iter()
                    .map(|x| format!("{x:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let kib = |v: Option<f64>| v.map(|k| k / 1024.0);
    let (touched, after_dma) = (rss("touched"), rss("after-dma"));
    rows.extend([
        Row::new("trapped read during a DMA", hv(&dma, "backend_read_during_dma_ns"), "ns")
            .vs("same read, DMA engine idle (host)", hv(&dma, "backend_read_idle_ns"))
            .at_most(DMA_READ_TARGET)
            .note(format!(
                "a client of our own; {} reads during {} transfers of {} MiB ({} ms each)",
                fmt_num(hv(&dma, "reads_during_dma")),
                fmt_num(hv(&dma, "dma_transfers")),
                fmt_num(hv(&dma, "dma_mib")),
                fmt_num(hv(&dma, "dma_transfer_ms"))
            )),
        Row::new("BAR2 write bandwidth", gf("bw_write.bar2"), "MB/s")
            .vs("guest RAM write", gf("bw_write.ram"))
            .at_least(0.8)
            .note("64 MiB, 64-bit stores")
            .placed("unpinned", Some("stock QEMU")),
        Row::new("BAR2 read bandwidth", gf("bw_read.bar2"), "MB/s")
            .vs("guest RAM read", gf("bw_read.ram"))
            .at_least(0.8)
            .note("64 MiB, 64-bit loads")
            .placed("unpinned", Some("stock QEMU")),
        Row::new("DMA guest RAM -> device", gf("dma_bw.backend"), "MB/s")
            .vs("guest CPU copy RAM -> BAR2", gf("dma_bw.cpu_copy"))
            .note(format!(
                "64 MiB in {} descriptor(s)",
                fmt_num(gf("dma_descriptors.backend"))
            ))
            .placed("unpinned", Some("stock QEMU")),
        Row::new("time to ready", ready.get("backend").copied(), "ms")
            .vs("cxl-type3-only VM", ready.get("type3").copied())
            .at_most(1.2)
            .note(format!(
                "QEMU start to region assembled (host clock), medians of runs: backend [{}], type3 [{}]",
                runs_of("backend"),
                runs_of("type3")
            ))
            .placed("unpinned", Some("stock QEMU")),
        Row::new("backend startup", hv(&daemon, "startup_ms_512m"), "ms")
            .vs("target 50 ms", Some(50.0))
            .at_most(1.0)
            .note(format!(
                "spawn to socket accepting; 64 GiB: {} ms",
                fmt_num(hv(&daemon, "startup_ms_64g"))
            )),
        Row::new("RSS idle, 512 MiB", kib(hv(&daemon, "rss_idle_kib_512m")), "MiB")
            .vs("target 16 MiB", Some(16.0))
            .at_most(1.0),
        Row::new("RSS idle, 64 GiB sparse", kib(hv(&daemon, "rss_idle_kib_64g")), "MiB")
            .vs("target 16 MiB", Some(16.0))
            .at_most(1.0),
        Row::new("RSS after guest touched 64 MiB", kib(hv(&touched, "VmRSS_kib")), "MiB")
            .vs("RSS idle, 512 MiB", kib(hv(&daemon, "rss_idle_kib_512m")))
            .note(format!(
                "via BAR2 (QEMU's mapping); device memory allocated {} MiB; after DMA of 64 MiB: RSS {} MiB",
                fmt_num(hv(&touched, "devmem_allocated_bytes").map(|b| b / 1048576.0)),
                fmt_num(kib(hv(&after_dma, "VmRSS_kib")))
            ))
            .placed("unpinned", Some("stock QEMU")),
    ]);

    print!("{}", table(&rows));
    let text = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let (machine, load) = (text("machine.txt"), text("load.txt"));
    let results = json!({
        "machine": machine.lines().collect::<Vec<_>>(),
        "load": load.lines().collect::<Vec<_>>(),
        "placements": placements,
        "figures": rows.iter().map(Row::json).collect::<Vec<_>>(),
        "per_op": counts,
        "guest": guest,
        "host": {
            "pingpong": PLACEMENTS.map(|(pk, _)| host(&format!("pingpong-{pk}.json"))),
            "pingpong_after": PLACEMENTS.map(|(pk, _)| host(&format!("pingpong-after-{pk}.json"))),
            "client": PLACEMENTS.map(|(pk, _)| host(&format!("client-{pk}.json"))),
            "client_dma": dma,
            "daemon": daemon,
        },
        "ready_ms": ready,
        "ready_runs_ms": ready_runs,
    });
    let mut f =
        std::fs::File::create(&out_path).map_err(|e| format!("{}: {e}", out_path.display()))?;
    f.write_all(
        serde_json::to_string_pretty(&results)
            .unwrap_or_default()
            .as_bytes(),
    )
    .map_err(|e| format!("{}: {e}", out_path.display()))?;
    eprintln!("hostbench: wrote {}", out_path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_guest_lines() {
        let g = guest_figures("x\nbench: reg_read.backend 1234.5 ns\r\n[  1.0] bench: bw_write.ram 300.0 MB/s\nbench-sync x\n");
        assert_eq!(g.get("reg_read.backend"), Some(&1234.5));
        assert_eq!(g.get("bw_write.ram"), Some(&300.0));
        assert_eq!(g.len(), 2);
    }

    #[test]
    fn rows_judge_ratios() {
        let r = Row::new("x", Some(3.0), "ns")
            .vs("y", Some(2.0))
            .at_most(1.5);
        assert_eq!(r.ratio(), Some(1.5));
        assert_eq!(r.holds(), Some(true));
        let r = Row::new("x", Some(1.0), "ns")
            .vs("y", Some(2.0))
            .at_least(0.8);
        assert_eq!(r.holds(), Some(false));
        // No anchor, or a zero one: no ratio, so no verdict.
        assert_eq!(Row::new("x", Some(1.0), "ns").at_most(1.0).holds(), None);
        assert_eq!(
            Row::new("x", Some(1.0), "ns").vs("y", Some(0.0)).ratio(),
            None
        );
        let j = Row::new("x", Some(3.0), "ns")
            .vs("y", Some(2.0))
            .at_most(1.2)
            .placed("2 cores", Some("stock QEMU"))
            .json();
        assert_eq!(j["placement"], "2 cores");
        assert_eq!(j["qemu"], "stock QEMU");
        assert_eq!(j["target"], "<=1.2");
        assert_eq!(j["holds"], false);
    }

    /// A perf window as [`crate::perf::perf_json`] gives it.
    fn window() -> Value {
        let t = |process: &str, comm: &str, syscalls: f64, wakeups: f64, switches: f64| {
            json!({"process": process, "comm": comm, "syscalls": syscalls,
                   "wakeups": wakeups, "switches": switches})
        };
        json!({"threads": [
            t("qemu", "qemu-system-x86", 40.0, 2.0, 4.0),
            t("qemu", "CPU 0/TCG", 500.0, 100.0, 200.0),
            t("qemu", "IO vfio-user", 20.0, 0.0, 0.0),
            t("backend", "cxl-accel-backe", 410.0, 100.0, 100.0),
            t("backend", "control", 0.0, 0.0, 0.0),
        ]})
    }

    #[test]
    fn counts_per_operation_by_thread_group() {
        // 100 operations, an idle window of 10 syscalls in QEMU's main thread.
        let idle = json!({"threads": [{"process": "qemu", "comm": "qemu-system-x86",
                                       "syscalls": 10.0, "wakeups": 2.0, "switches": 4.0}]});
        let c = per_op(&window(), Some(&idle), 100.0).unwrap();
        assert_eq!(
            c["vCPU"],
            Counts {
                syscalls: 5.0,
                wakeups: 1.0,
                switches: 2.0
            }
        );
        // QEMU's other threads together, less the idle window.
        assert_eq!(
            c["QEMU other"],
            Counts {
                syscalls: 0.5,
                wakeups: 0.0,
                switches: 0.0
            }
        );
        assert_eq!(c["backend"].syscalls, 4.1);
        assert!(per_op(&window(), None, 0.0).is_none());
        assert_eq!(
            counts_text(&Some(c), "read"),
            "syscalls/switches/wake-ups per read: vCPU 5.0/2.0/1.0, QEMU other 0.5/0.0/0.0, \
             backend 4.1/1.0/1.0"
        );
        assert_eq!(counts_text(&None, "read"), "no perf counts per read");
    }

    /// A trapped-access VM's folder: `figures` as console lines, the message
    /// counters around the Identify phase, perf counts of the read phase and of the
    /// idle one.
    fn trap_vm(dir: &Path, figures: &[(&str, f64)], identify: [(f64, f64, f64); 2]) -> TrapVm {
        std::fs::create_dir_all(dir).unwrap();
        let console: String = figures
            .iter()
            .map(|(k, v)| format!("bench: {k} {v:.1} ns\n"))
            .collect();
        std::fs::write(dir.join("console.log"), console).unwrap();
        for (tag, (rd, wr, posted)) in ["start", "end"].iter().zip(identify) {
            let s = json!({"vfio_user": {"by_command": {"region_read": rd, "region_write": wr},
                                         "posted_writes": posted}});
            std::fs::write(
                dir.join(format!("status-count-identify-{tag}.json")),
                s.to_string(),
            )
            .unwrap();
        }
        std::fs::write(dir.join("perf-count-read.json"), window().to_string()).unwrap();
        let idle = json!({"threads": []});
        std::fs::write(dir.join("perf-count-idle.json"), idle.to_string()).unwrap();
        TrapVm::load(dir.to_path_buf()).unwrap()
    }

    #[test]
    fn trapped_rows_against_floor_type3_and_stock() {
        let tmp = tempfile::tempdir().unwrap();
        let figs = |read: f64, identify: f64| {
            vec![
                ("reg_read.backend", read),
                ("reg_read.type3", 300.0),
                ("mbox_identify.backend", identify),
                ("mbox_identify.type3", 10_000.0),
                ("ops.read", 100.0),
                ("ops.identify", 10.0),
            ]
        };
        // Stock: 6 messages per Identify, none posted.
        let stock = trap_vm(
            &tmp.path().join("s"),
            &figs(30_000.0, 200_000.0),
            [(100.0, 50.0, 0.0), (140.0, 70.0, 0.0)],
        );
        // Patched: 6 messages per Identify, 2 of them posted: 4 round trips.
        let patched = trap_vm(
            &tmp.path().join("p"),
            &figs(12_000.0, 100_000.0),
            [(100.0, 50.0, 5.0), (140.0, 70.0, 25.0)],
        );
        let mut counts = Map::new();
        let rows = trap_rows(
            &stock,
            ("stock", "stock QEMU"),
            "2 cores",
            Some(10_000.0),
            None,
            &mut counts,
        );
        let find = |rows: &[Row], name: &str| -> (Option<f64>, Option<bool>) {
            let r = rows
                .iter()
                .find(|r| r.name == name)
                .unwrap_or_else(|| panic!("no row {name}"));
            (r.ratio(), r.holds())
        };
        assert_eq!(
            find(&rows, "trapped read [stock, 2 cores]"),
            (Some(3.0), Some(false))
        );
        assert_eq!(
            find(&rows, "trapped read vs cxl-type3 [stock, 2 cores]"),
            (Some(100.0), None)
        );
        assert_eq!(
            find(&rows, "mailbox Identify vs cxl-type3 [stock, 2 cores]"),
            (Some(20.0), Some(false))
        );
        assert!(rows
            .iter()
            .all(|r| r.placement == "2 cores" && r.qemu == Some("stock QEMU")));
        // The stock QEMU has no round-trip or patched-vs-stock rows.
        assert!(!rows
            .iter()
            .any(|r| r.name.starts_with("Identify round trips")));
        let ident = rows
            .iter()
            .find(|r| r.name == "mailbox Identify [stock, 2 cores]")
            .unwrap();
        assert!(
            ident
                .note
                .starts_with("6.00 messages, 0.00 posted: 6.00 round trips"),
            "{}",
            ident.note
        );
        let read = rows
            .iter()
            .find(|r| r.name == "trapped read [stock, 2 cores]")
            .unwrap();
        assert!(read.note.contains("vCPU 5.0/2.0/1.0"), "{}", read.note);
        assert!(counts.contains_key("trapped read [stock, 2 cores]"));

        let rows = trap_rows(
            &patched,
            ("patched", "patched QEMU"),
            "2 cores",
            Some(10_000.0),
            Some(&stock),
            &mut counts,
        );
        assert_eq!(
            find(&rows, "trapped read [patched, 2 cores]"),
            (Some(1.2), Some(true))
        );
        let rt = rows
            .iter()
            .find(|r| r.name == "Identify round trips [patched, 2 cores]")
            .unwrap();
        assert_eq!(rt.value, Some(4.0));
        assert_eq!(rt.holds(), Some(true));
        assert_eq!(
            find(&rows, "mailbox Identify, patched vs stock [2 cores]"),
            (Some(0.5), Some(true))
        );
    }
}
