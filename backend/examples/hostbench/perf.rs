//! Per-thread counts of system calls, wake-ups and context switches (perf stat).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::{opt, scratch_dir, Res};

/// What is counted on every thread, and the names the JSON gives them: system calls
/// entered; wake-ups the thread issues (sched_waking fires in the waker's context,
/// also when the wake-up itself completes on another CPU); context switches (a
/// thread that blocks switches out, and needs a wake-up to run again).
pub(crate) const PERF_EVENTS: [(&str, &str); 3] = [
    ("raw_syscalls:sys_enter", "syscalls"),
    ("sched:sched_waking", "wakeups"),
    ("context-switches", "switches"),
];

/// `perf stat` counting [`PERF_EVENTS`] on every thread of some processes, from
/// [`Perf::enable`] to [`Perf::finish`] (its control FIFOs switch it on and off,
/// so the window is exact).
pub(crate) struct Perf {
    child: Child,
    ctl: std::fs::File,
    ack: std::fs::File,
    dir: PathBuf,
    /// (label, thread ids) of each process, read when perf attached.
    procs: Vec<(String, Vec<u32>)>,
}

/// A FIFO at `path`.
fn mkfifo(path: &Path) -> Res<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{}: NUL in path", path.display()))?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(format!(
            "mkfifo {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Thread ids of process `pid`.
fn threads_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

impl Perf {
    /// Attach to every thread of each (label, pid), counting nothing yet.
    fn attach(procs: &[(String, u32)]) -> Res<Perf> {
        use std::os::unix::fs::OpenOptionsExt;
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = scratch_dir(&format!("cxl-accel-hostbench-perf{n}"))?;
        let (ctl_path, ack_path) = (dir.join("ctl"), dir.join("ack"));
        mkfifo(&ctl_path)?;
        mkfifo(&ack_path)?;
        let pids: Vec<String> = procs.iter().map(|(_, p)| p.to_string()).collect();
        let events: Vec<&str> = PERF_EVENTS.iter().map(|(e, _)| *e).collect();
        let control = format!("fifo:{},{}", ctl_path.display(), ack_path.display());
        let child = Command::new("perf")
            .args(["stat", "-x", ",", "--per-thread", "-D", "-1"])
            .args(["-e", &events.join(",")])
            .args(["-p", &pids.join(",")])
            .args(["--control", &control])
            .arg("-o")
            .arg(dir.join("out.csv"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("perf: {e} (install linux-perf)"))?;
        // Read-write opens never block on a FIFO (Linux), whoever opens the other end.
        let open = |p: &Path, flags: i32| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(flags)
                .open(p)
                .map_err(|e| format!("{}: {e}", p.display()))
        };
        Ok(Perf {
            child,
            ctl: open(&ctl_path, 0)?,
            ack: open(&ack_path, libc::O_NONBLOCK)?,
            dir,
            procs: procs
                .iter()
                .map(|(l, p)| (l.clone(), threads_of(*p)))
                .collect(),
        })
    }

    /// Send `cmd` and wait (up to 10 s) for perf's acknowledgement (`ack\n`, which
    /// perf 6.1 follows with a NUL).
    fn command(&mut self, cmd: &str) -> Res<()> {
        use std::io::Read;
        writeln!(self.ctl, "{cmd}").map_err(|e| format!("perf control: {e}"))?;
        let t = Instant::now();
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"ack\n") {
            if t.elapsed() > Duration::from_secs(10) {
                return Err(format!("perf did not acknowledge {cmd:?} within 10 s"));
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!("perf exited with {st}"));
            }
            let mut b = [0u8; 16];
            match self.ack.read(&mut b) {
                Ok(n) => got.extend_from_slice(&b[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => return Err(format!("perf ack: {e}")),
            }
        }
        Ok(())
    }

    fn enable(&mut self) -> Res<()> {
        self.command("enable")
    }

    /// Stop counting; the counts per thread, as [`perf_json`] gives them.
    fn finish(mut self) -> Res<Value> {
        let disabled = self.command("disable");
        // SAFETY: signalling our own child; SIGINT makes perf stat write its counts.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        disabled?;
        let out = self.dir.join("out.csv");
        let csv = std::fs::read_to_string(&out).map_err(|e| format!("{}: {e}", out.display()));
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(perf_json(&csv?, &self.procs))
    }
}

/// Counts of `perf stat -x, --per-thread` output (`COMM-TID,VALUE,UNIT,EVENT,...`),
/// as {"threads": [{"process", "comm", "tid", "syscalls", "wakeups", "switches"}]}.
/// A thread's process is the label whose thread ids hold it ("?" if none does). A
/// thread that never ran reads `<not counted>`: zero.
pub(crate) fn perf_json(csv: &str, procs: &[(String, Vec<u32>)]) -> Value {
    let mut threads: BTreeMap<u32, Map<String, Value>> = BTreeMap::new();
    for line in csv.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split(',').collect();
        let (Some(who), Some(value), Some(event)) = (f.first(), f.get(1), f.get(3)) else {
            continue;
        };
        let Some((comm, tid)) = who.rsplit_once('-') else {
            continue;
        };
        let (Ok(tid), Some((_, name))) = (
            tid.parse::<u32>(),
            PERF_EVENTS.iter().find(|(e, _)| e == event),
        ) else {
            continue;
        };
        let v: f64 = value.parse().unwrap_or(0.0);
        let t = threads.entry(tid).or_insert_with(|| {
            let process = procs
                .iter()
                .find(|(_, tids)| tids.contains(&tid))
                .map_or("?", |(l, _)| l.as_str());
            let mut m = Map::new();
            m.insert("process".into(), json!(process));
            m.insert("comm".into(), json!(comm));
            m.insert("tid".into(), json!(tid));
            m
        });
        t.insert((*name).into(), json!(v));
    }
    json!({"threads": threads.into_values().map(Value::Object).collect::<Vec<_>>()})
}

/// `hostbench perf --pid LABEL=PID... --out FILE`: count on every thread of the
/// processes from when it prints `counting` until a line (or the end) on stdin.
pub(crate) fn perf_cmd(args: &[String]) -> Res<()> {
    let mut procs = Vec::new();
    for (i, a) in args.iter().enumerate() {
        if a == "--pid" {
            let v = args.get(i + 1).ok_or("--pid needs LABEL=PID")?;
            let (l, p) = v.split_once('=').ok_or("--pid needs LABEL=PID")?;
            procs.push((
                l.to_string(),
                p.parse().map_err(|e| format!("--pid {v}: {e}"))?,
            ));
        }
    }
    let out = PathBuf::from(opt(args, "--out").ok_or("--out needed")?);
    if procs.is_empty() {
        return Err("--pid needed".into());
    }
    let mut p = Perf::attach(&procs)?;
    p.enable()?;
    println!("counting");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    let v = p.finish()?;
    std::fs::write(&out, v.to_string()).map_err(|e| format!("{}: {e}", out.display()))
}

/// Round trips counted under perf, after the timed ones.
pub(crate) const COUNTED_OPS: usize = 5000;

/// Run `ops` with perf counting on this process and `server`, if perf can: the
/// counts (with "ops"), or null and a warning.
pub(crate) fn counted(server: u32, ops: usize, mut op: impl FnMut() -> Res<()>) -> Res<Value> {
    let procs = [
        ("client".to_string(), std::process::id()),
        ("server".to_string(), server),
    ];
    let mut p = match Perf::attach(&procs) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("hostbench: no per-thread counts: {e}");
            return Ok(Value::Null);
        }
    };
    p.enable()?;
    for _ in 0..ops {
        op()?;
    }
    let mut v = p.finish()?;
    if let Some(o) = v.as_object_mut() {
        o.insert("ops".into(), json!(ops));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `perf stat -x, --per-thread` output as perf 6.1 writes it.
    const PERF_CSV: &str = "# started on Sat Dec  5 02:29:20 2026

qemu-system-x86-100,40,,raw_syscalls:sys_enter,1000,100.00,,
CPU 0/TCG-101,500,,raw_syscalls:sys_enter,1000,100.00,,
cxl-accel-backe-200,410,,raw_syscalls:sys_enter,1000,100.00,,
control-201,<not counted>,,raw_syscalls:sys_enter,0,100.00,,
qemu-system-x86-100,2,,sched:sched_waking,1000,100.00,,
CPU 0/TCG-101,100,,sched:sched_waking,1000,100.00,,
cxl-accel-backe-200,100,,sched:sched_waking,1000,100.00,,
control-201,<not counted>,,sched:sched_waking,0,100.00,,
qemu-system-x86-100,4,,context-switches,1000,100.00,,
CPU 0/TCG-101,200,,context-switches,1000,100.00,,
cxl-accel-backe-200,100,,context-switches,1000,100.00,,
control-201,<not counted>,,context-switches,0,100.00,,
";

    #[test]
    fn perf_output_parses_per_thread() {
        let procs = [
            ("qemu".to_string(), vec![100, 101]),
            ("backend".to_string(), vec![200, 201]),
        ];
        let w = perf_json(PERF_CSV, &procs);
        let threads = w["threads"].as_array().unwrap();
        assert_eq!(threads.len(), 4);
        let vcpu = threads.iter().find(|t| t["tid"] == 101).unwrap();
        assert_eq!(vcpu["comm"], "CPU 0/TCG");
        assert_eq!(vcpu["process"], "qemu");
        assert_eq!(vcpu["syscalls"], 500.0);
        assert_eq!(vcpu["wakeups"], 100.0);
        assert_eq!(vcpu["switches"], 200.0);
        let backend = threads.iter().find(|t| t["tid"] == 200).unwrap();
        assert_eq!(backend["comm"], "cxl-accel-backe");
        assert_eq!(backend["process"], "backend");
        // A thread that never ran.
        let control = threads.iter().find(|t| t["tid"] == 201).unwrap();
        assert_eq!(control["syscalls"], 0.0);
        // A thread of no listed process.
        let w = perf_json(PERF_CSV, &procs[..1]);
        let backend = w["threads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tid"] == 200)
            .unwrap()
            .clone();
        assert_eq!(backend["process"], "?");
    }
}
