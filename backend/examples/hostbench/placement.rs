//! Where the two sides of a measurement run.

use crate::{opt, Res};
use serde_json::{json, Value};

/// The CPUs of a measurement's two sides: the client (the ping-pong's parent, our
/// vfio-user client; QEMU in the VM runs) and the server (the echo child, the
/// backend). Equal CPUs put both on one core: every round trip is then two context
/// switches on that core and no cross-CPU wake-up; different CPUs make every
/// message wake a thread on the other core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placement {
    pub(crate) client: usize,
    pub(crate) server: usize,
}

impl Placement {
    /// "A,B": the client on CPU A, the server on CPU B.
    pub(crate) fn parse(s: &str) -> Res<Self> {
        let (a, b) = s
            .split_once(',')
            .ok_or_else(|| format!("--cpus {s:?}: expected CLIENT,SERVER"))?;
        let cpu = |c: &str| -> Res<usize> {
            let n: usize = c.trim().parse().map_err(|e| format!("--cpus {s:?}: {e}"))?;
            if n >= libc::CPU_SETSIZE as usize {
                return Err(format!("--cpus {s:?}: no CPU {n}"));
            }
            Ok(n)
        };
        Ok(Placement {
            client: cpu(a)?,
            server: cpu(b)?,
        })
    }

    /// `--cpus` of `args`, if given.
    pub(crate) fn from_args(args: &[String]) -> Res<Option<Self>> {
        opt(args, "--cpus").map(Self::parse).transpose()
    }

    pub(crate) fn name(&self) -> &'static str {
        if self.client == self.server {
            "1 core"
        } else {
            "2 cores"
        }
    }

    pub(crate) fn json(p: Option<Self>) -> Value {
        match p {
            Some(p) => json!({"name": p.name(), "client_cpu": p.client, "server_cpu": p.server}),
            None => json!({"name": "unpinned"}),
        }
    }
}

/// Restrict thread `tid` (0: the calling thread) to CPU `cpu`.
pub(crate) fn pin(tid: libc::pid_t, cpu: usize) -> std::io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` < CPU_SETSIZE (checked by Placement::parse), within the set.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: the set is valid for its size; the kernel only reads it.
    let r = unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placements_parse() {
        assert_eq!(
            Placement::parse("0,1"),
            Ok(Placement {
                client: 0,
                server: 1
            })
        );
        assert_eq!(Placement::parse("1, 1").map(|p| p.name()), Ok("1 core"));
        assert_eq!(Placement::parse("0,1").map(|p| p.name()), Ok("2 cores"));
        assert!(Placement::parse("0").is_err());
        assert!(Placement::parse("0,x").is_err());
        assert!(Placement::parse("0,100000").is_err());
    }
}
