//! CPU lists (taskset syntax) and moving this whole process onto the server's CPUs while a
//! bare rate is measured.
//!
//! The two vCPUs of this machine do not run at the same speed at the same time: measured
//! alternately, one minute apart, the same single-thread argon2 ran at 54 and 74 verifies/s on
//! one CPU, and RS256 verify at 37k/s on one CPU and 53k/s on the other. A bare rate measured on
//! the load generator's CPU would compare the server's core with a different core. So while a
//! bare rate runs (the server idle meanwhile), every thread of the benchmark moves to the
//! server's CPUs, and back afterwards.
//!
//! PostgreSQL and Redis are pinned too ([`ServicesPinned`]): left free, the scheduler runs them
//! on the server's CPU, next to the task that woke them (see bench/README.md, "Pinning").

/// The CPUs of a taskset list such as `0`, `0,2` or `0-3`; `None` when the list is empty.
pub fn parse(spec: &str) -> anyhow::Result<Option<Vec<usize>>> {
    let mut cpus = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || anyhow::anyhow!("{spec:?} is not a CPU list (e.g. 0 or 0,1 or 0-3)");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (
                    a.trim().parse().map_err(|_| bad())?,
                    b.trim().parse().map_err(|_| bad())?,
                );
                anyhow::ensure!(a <= b, bad());
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().map_err(|_| bad())?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok((!cpus.is_empty()).then_some(cpus))
}

/// While alive, every thread of this process runs on the given CPUs (threads started
/// meanwhile inherit it); dropping it puts them back on the CPUs they had.
pub struct Pinned {
    before: libc::cpu_set_t,
}

impl Pinned {
    pub fn to(cpus: &[usize]) -> anyhow::Result<Self> {
        let before = affinity(0).ok_or_else(|| {
            anyhow::anyhow!("sched_getaffinity: {}", std::io::Error::last_os_error())
        })?;
        let target = cpu_set(cpus);
        set_all_threads(&target)?;
        Ok(Self { before })
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Err(err) = set_all_threads(&self.before) {
            eprintln!("bench: could not restore the CPU affinity: {err}");
        }
    }
}

fn set_all_threads(set: &libc::cpu_set_t) -> anyhow::Result<()> {
    for tid in threads("self")? {
        set_affinity(tid, set)?;
    }
    Ok(())
}

/// The thread ids of process `pid` (`self` for this one).
fn threads(pid: &str) -> std::io::Result<Vec<libc::pid_t>> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|task| task.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}

/// Sets a thread's CPUs. A thread that has exited since it was listed (ESRCH) is skipped.
fn set_affinity(tid: libc::pid_t, set: &libc::cpu_set_t) -> anyhow::Result<()> {
    // SAFETY: the set is a valid `cpu_set_t` of the size passed.
    let done = unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(set), set) };
    let err = std::io::Error::last_os_error();
    anyhow::ensure!(
        done == 0 || err.raw_os_error() == Some(libc::ESRCH),
        "sched_setaffinity({tid}): {err}"
    );
    Ok(())
}

/// The set of the given CPUs.
fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: `cpu_set_t` is a plain bit set, valid when zeroed; CPU_SET writes only inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        set
    }
}

/// A thread's CPUs (0: the calling thread), `None` if it has exited.
fn affinity(tid: libc::pid_t) -> Option<libc::cpu_set_t> {
    // SAFETY: a zeroed `cpu_set_t` is valid; sched_getaffinity writes only inside `set`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0)
            .then_some(set)
    }
}

/// Every thread of every process whose command name is one of `names`.
fn threads_of_programs(names: &[&str]) -> Vec<libc::pid_t> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| names.contains(&comm.trim_end()))
        })
        .flat_map(|pid| threads(&pid).unwrap_or_default())
        .collect()
}

/// While alive, every thread of the named programs (PostgreSQL's postmaster and backends, Redis)
/// runs on the given CPUs. Backends forked meanwhile inherit the postmaster's CPUs. Dropping it
/// gives each thread found at the start its CPUs back, and any thread of those programs
/// started since the CPUs the first one had.
pub struct ServicesPinned {
    names: Vec<&'static str>,
    before: Vec<(libc::pid_t, libc::cpu_set_t)>,
}

impl ServicesPinned {
    pub fn to(names: &[&'static str], cpus: &[usize]) -> anyhow::Result<Self> {
        let before: Vec<_> = threads_of_programs(names)
            .into_iter()
            .filter_map(|tid| Some((tid, affinity(tid)?)))
            .collect();
        anyhow::ensure!(!before.is_empty(), "no running process is one of {names:?}");
        let target = cpu_set(cpus);
        let pinned = Self {
            names: names.to_vec(),
            before,
        };
        for &(tid, _) in &pinned.before {
            set_affinity(tid, &target)?;
        }
        Ok(pinned)
    }
}

impl Drop for ServicesPinned {
    fn drop(&mut self) {
        let fallback = self.before[0].1;
        for tid in threads_of_programs(&self.names) {
            let set = self
                .before
                .iter()
                .find(|(known, _)| *known == tid)
                .map_or(fallback, |(_, set)| *set);
            if let Err(err) = set_affinity(tid, &set) {
                eprintln!("bench: could not restore the CPUs of thread {tid}: {err}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ServicesPinned, affinity, parse, threads};

    #[test]
    fn cpu_lists_parse_like_taskset() {
        assert_eq!(parse("0").unwrap(), Some(vec![0]));
        assert_eq!(parse("0-2,5, 1").unwrap(), Some(vec![0, 1, 2, 5]));
        assert_eq!(parse("").unwrap(), None);
        assert!(parse("2-1").is_err());
        assert!(parse("x").is_err());
    }

    /// The CPUs of a process, as a list.
    fn cpus_of(pid: u32) -> Vec<usize> {
        let set = affinity(pid as libc::pid_t).expect("the process is alive");
        // SAFETY: `set` is a valid `cpu_set_t`; CPU_ISSET only reads it.
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
            .collect()
    }

    #[test]
    fn services_are_pinned_while_alive_and_get_their_cpus_back() {
        // A program with a name nothing else on the machine has: a copy of `sleep`.
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("lk-pin-probe");
        std::fs::copy("/bin/sleep", &program).unwrap();
        let mut child = std::process::Command::new(&program)
            .arg("30")
            .spawn()
            .unwrap();
        let before = cpus_of(child.id());
        assert!(!threads(&child.id().to_string()).unwrap().is_empty());
        {
            let _pinned = ServicesPinned::to(&["lk-pin-probe"], &[0]).unwrap();
            assert_eq!(cpus_of(child.id()), vec![0]);
        }
        assert_eq!(cpus_of(child.id()), before);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(ServicesPinned::to(&["lk-pin-probe"], &[0]).is_err());
    }
}
