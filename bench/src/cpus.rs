//! CPU lists (taskset syntax) and moving this whole process onto the server's CPUs while a
//! bare rate is measured.
//!
//! The two vCPUs of this machine do not run at the same speed at the same time: measured
//! alternately, one minute apart, the same single-thread argon2 ran at 54 and 74 verifies/s on
//! one CPU, and RS256 verify at 37k/s on one CPU and 53k/s on the other. A bare rate measured on
//! the load generator's CPU would compare the server's core with a different core. So while a
//! bare rate runs (the server idle meanwhile), every thread of the benchmark moves to the
//! server's CPUs, and back afterwards.

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
        // SAFETY: `cpu_set_t` is a plain bit set, valid when zeroed; the CPU_* helpers and
        // sched_getaffinity only write inside the set they are given.
        let (before, target) = unsafe {
            let mut before: libc::cpu_set_t = std::mem::zeroed();
            let size = std::mem::size_of::<libc::cpu_set_t>();
            anyhow::ensure!(
                libc::sched_getaffinity(0, size, &mut before) == 0,
                "sched_getaffinity: {}",
                std::io::Error::last_os_error()
            );
            let mut target: libc::cpu_set_t = std::mem::zeroed();
            for &cpu in cpus {
                libc::CPU_SET(cpu, &mut target);
            }
            (before, target)
        };
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
    for task in std::fs::read_dir("/proc/self/task")? {
        let Some(tid) = task?.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        // SAFETY: the set is a valid `cpu_set_t` of the size passed; a thread that has exited
        // since the directory was read only makes the call fail (ESRCH), which is skipped.
        let done = unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(set), set) };
        let err = std::io::Error::last_os_error();
        anyhow::ensure!(
            done == 0 || err.raw_os_error() == Some(libc::ESRCH),
            "sched_setaffinity({tid}): {err}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn cpu_lists_parse_like_taskset() {
        assert_eq!(parse("0").unwrap(), Some(vec![0]));
        assert_eq!(parse("0-2,5, 1").unwrap(), Some(vec![0, 1, 2, 5]));
        assert_eq!(parse("").unwrap(), None);
        assert!(parse("2-1").is_err());
        assert!(parse("x").is_err());
    }
}
