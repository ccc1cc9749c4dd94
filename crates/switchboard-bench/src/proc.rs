//! What the bench reads from the system: a process's CPU time and memory (`/proc/<pid>/stat`,
//! `/proc/<pid>/status`), the open-file limit, the ephemeral port range, the machine's
//! description, and CPU pinning of the generator's threads.

use std::{fs, time::Instant};

use serde::{Deserialize, Serialize};

/// CPU time used so far by a set of processes (or by the whole machine), and when it was read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuSample {
    /// User plus system time of all the processes (the machine: its busy time), in seconds.
    cpu_s: f64,
    at: Instant,
}

impl CpuSample {
    /// Reads `/proc/<pid>/stat` of every pid (`None`: this process).
    pub(crate) fn read(pids: &[Option<u32>]) -> Result<CpuSample, String> {
        let ticks = rustix::param::clock_ticks_per_second().max(1) as f64;
        let mut total = 0u64;
        for pid in pids {
            let path = match pid {
                Some(pid) => format!("/proc/{pid}/stat"),
                None => "/proc/self/stat".to_string(),
            };
            let text = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
            total += stat_cpu_ticks(&text).ok_or_else(|| format!("{path}: unexpected format"))?;
        }
        Ok(CpuSample {
            cpu_s: total as f64 / ticks,
            at: Instant::now(),
        })
    }

    /// CPU time the whole machine spent busy (all CPUs, every process and the kernel), from
    /// the first line of `/proc/stat`; `None` when it cannot be read.
    pub(crate) fn read_machine() -> Option<CpuSample> {
        let text = fs::read_to_string("/proc/stat").ok()?;
        let ticks = rustix::param::clock_ticks_per_second().max(1) as f64;
        Some(CpuSample {
            cpu_s: proc_stat_busy_ticks(&text)? as f64 / ticks,
            at: Instant::now(),
        })
    }

    /// CPU use between two samples as a percentage of one core (200 = two cores busy).
    pub(crate) fn percent_since(&self, earlier: &CpuSample) -> f64 {
        let wall = self.at.duration_since(earlier.at).as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        (self.cpu_s - earlier.cpu_s).max(0.0) / wall * 100.0
    }
}

/// user + nice + system + irq + softirq + steal of the `cpu` line (idle and iowait left out).
fn proc_stat_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    Some(get(0) + get(1) + get(2) + get(5) + get(6) + get(7))
}

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field
/// 2) may contain spaces and parentheses, so fields are counted after its last `)`.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // `rest` starts at field 3 (state): utime is the 12th of them, stime the 13th.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// How many times a listen queue on this machine (network namespace) overflowed so far:
/// `TcpExt: ListenOverflows` of `/proc/net/netstat`. Each overflow drops a connection's
/// handshake, which the client retries after a second.
pub(crate) fn listen_overflows() -> Option<u64> {
    netstat_field(
        &fs::read_to_string("/proc/net/netstat").ok()?,
        "TcpExt:",
        "ListenOverflows",
    )
}

/// A field of `/proc/net/netstat`: a header line of names, then a line of values.
fn netstat_field(text: &str, section: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(section));
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if let Some(i) = names.split_ascii_whitespace().position(|n| n == name) {
            return values.split_ascii_whitespace().nth(i)?.parse().ok();
        }
    }
    None
}

/// Resident memory of a process in bytes (`VmRSS` of `/proc/<pid>/status`).
pub(crate) fn rss_bytes(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    status_rss_bytes(&text).ok_or_else(|| format!("{path}: no VmRSS line"))
}

fn status_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line["VmRSS:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Checks that `pid` names a running process.
pub(crate) fn check_pid(pid: u32) -> Result<(), String> {
    fs::metadata(format!("/proc/{pid}"))
        .map(|_| ())
        .map_err(|_| format!("--server-pid {pid}: no such process"))
}

/// Makes room for `connections` sockets in this process: raises the soft open-file limit to
/// the hard one when needed, and refuses when even that is too small.
pub(crate) fn ensure_open_files(connections: usize) -> Result<u64, String> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    // Descriptors besides the sockets: stdio, the runtime's epoll and eventfds, /proc reads.
    let need = connections as u64 + 64;
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    if need <= soft {
        return Ok(soft);
    }
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if need <= hard {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return Ok(hard);
        }
    }
    Err(format!(
        "{connections} connections need {need} open files but this process may open at most \
         {} (ulimit -n; hard limit {}): use at most {} connections per bench process, or \
         raise the limit (`ulimit -n`, LimitNOFILE=) and run again",
        soft,
        limit.maximum.map_or("unlimited".into(), |h| h.to_string()),
        hard.max(soft).saturating_sub(64)
    ))
}

/// The size of the ephemeral port range (`/proc/sys/net/ipv4/ip_local_port_range`): how many
/// connections one source address can open to one server address.
pub(crate) fn ephemeral_ports() -> Option<u64> {
    let text = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_ascii_whitespace();
    let lo: u64 = it.next()?.parse().ok()?;
    let hi: u64 = it.next()?.parse().ok()?;
    Some(hi.saturating_sub(lo) + 1)
}

/// The machine a result was measured on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Machine {
    /// CPUs this process may run on.
    pub(crate) nproc: usize,
    /// `model name` from `/proc/cpuinfo`.
    pub(crate) cpu_model: String,
    /// The kernel release (`uname -r`).
    pub(crate) kernel: String,
    /// Total memory in bytes (`MemTotal`).
    pub(crate) memory_bytes: u64,
}

impl Machine {
    /// Reads the description of this machine; unknown parts are empty or zero.
    pub(crate) fn this() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let memory_bytes = fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
                let kib: u64 = line["MemTotal:".len()..]
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()?;
                Some(kib * 1024)
            })
            .unwrap_or(0);
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel,
            memory_bytes,
        }
    }
}

/// Parses a CPU list such as `2,3` or `0-3,6`.
pub(crate) fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("bad CPU list {s:?} (examples: 2,3 or 0-3)");
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.trim().parse().map_err(|_| bad())?;
                let b: usize = b.trim().parse().map_err(|_| bad())?;
                if a > b || b >= rustix::thread::CpuSet::MAX_CPU {
                    return Err(bad());
                }
                cpus.extend(a..=b);
            }
            None => {
                let c: usize = part.parse().map_err(|_| bad())?;
                if c >= rustix::thread::CpuSet::MAX_CPU {
                    return Err(bad());
                }
                cpus.push(c);
            }
        }
    }
    if cpus.is_empty() {
        return Err(format!("empty CPU list {s:?}"));
    }
    Ok(cpus)
}

/// Checks that this process may run on every CPU of `cpus`.
pub(crate) fn check_cpus(cpus: &[usize]) -> Result<(), String> {
    let allowed = rustix::thread::sched_getaffinity(None)
        .map_err(|e| format!("reading the CPUs this process may use: {e}"))?;
    match cpus.iter().find(|c| !allowed.is_set(**c)) {
        None => Ok(()),
        Some(c) => {
            let list: Vec<String> = (0..rustix::thread::CpuSet::MAX_CPU)
                .filter(|c| allowed.is_set(*c))
                .map(|c| c.to_string())
                .collect();
            Err(format!(
                "--cpu-list: CPU {c} is not available to this process (available: {})",
                list.join(",")
            ))
        }
    }
}

/// Pins the calling thread to `cpu`.
pub(crate) fn pin_current_thread(cpu: usize) -> Result<(), String> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).map_err(|e| format!("pinning to CPU {cpu}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "1234 (my (weird) cmd) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 \
                    8 0 100 1000000 200 18446744073709551615";
        assert_eq!(stat_cpu_ticks(line), Some(325));
        let own = fs::read_to_string("/proc/self/stat").unwrap();
        assert!(stat_cpu_ticks(&own).is_some());
        let a = CpuSample::read(&[None]).unwrap();
        let b = CpuSample::read(&[None]).unwrap();
        assert!(b.percent_since(&a) >= 0.0);
    }

    #[test]
    fn machine_busy_time_leaves_idle_out() {
        let stat = "cpu  100 5 50 1000 20 1 2 3 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(proc_stat_busy_ticks(stat), Some(161));
        assert!(CpuSample::read_machine().is_some());
    }

    #[test]
    fn netstat_fields_are_found_by_name() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 467 470\n\
                    IpExt: InNoRoutes\nIpExt: 3\n";
        assert_eq!(netstat_field(text, "TcpExt:", "ListenOverflows"), Some(467));
        assert_eq!(netstat_field(text, "IpExt:", "InNoRoutes"), Some(3));
        assert_eq!(netstat_field(text, "TcpExt:", "Nope"), None);
    }

    #[test]
    fn rss_is_read_in_bytes() {
        assert_eq!(
            status_rss_bytes("Name:\tx\nVmRSS:\t   2048 kB\nThreads: 1\n"),
            Some(2048 * 1024)
        );
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("2,3").unwrap(), vec![2, 3]);
        assert_eq!(parse_cpu_list("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert!(parse_cpu_list("").is_err());
        assert!(check_cpus(&[0]).is_ok());
        let e = check_cpus(&[1000]).unwrap_err();
        assert!(e.contains("CPU 1000"), "{e}");
    }

    #[test]
    fn machine_is_described() {
        let m = Machine::this();
        assert!(m.nproc >= 1);
        assert!(!m.kernel.is_empty());
    }
}
