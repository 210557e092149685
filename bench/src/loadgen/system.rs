//! What the operating system tells about the processes under test: a server's RSS and CPU time
//! from /proc, the load generator's own CPU from getrusage, file-descriptor limits, and the
//! machine description that goes into the results.

use std::time::Duration;

use anyhow::{anyhow, Context};
use nix::sys::resource::{getrlimit, getrusage, setrlimit, Resource, UsageWho};

/// One reading of a process: resident memory and CPU time consumed since it started.
#[derive(Debug, Clone, Copy)]
pub struct ProcessSample {
    pub rss_kib: u64,
    pub user: Duration,
    pub system: Duration,
}

impl ProcessSample {
    pub fn cpu(&self) -> Duration {
        self.user + self.system
    }
}

/// The kernel's clock tick, the unit of utime and stime in /proc/PID/stat.
fn clock_ticks_per_second() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(ticks)) if ticks > 0 => ticks as u64,
        // 100 is what Linux has used on every mainstream architecture for decades.
        _ => 100,
    }
}

/// Reads /proc/PID/status (VmRSS) and /proc/PID/stat (utime, stime, all threads included).
pub fn sample_process(pid: u32) -> anyhow::Result<ProcessSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name come state (field 3) … utime is field 14 and stime field 15, i.e. indexes 11 and 12 here.
    let ticks = |index: usize| -> anyhow::Result<u64> {
        fields
            .get(index)
            .and_then(|field| field.parse().ok())
            .ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))
    };
    let per_second = clock_ticks_per_second();
    let to_duration =
        |ticks: u64| Duration::from_nanos(ticks.saturating_mul(1_000_000_000 / per_second));
    Ok(ProcessSample {
        rss_kib,
        user: to_duration(ticks(11)?),
        system: to_duration(ticks(12)?),
    })
}

/// CPU time this load generator has used (all its threads), from getrusage.
pub fn own_cpu() -> Duration {
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(usage) => {
            let user = usage.user_time();
            let system = usage.system_time();
            let micros = |time: nix::sys::time::TimeVal| {
                (time.tv_sec() as u64) * 1_000_000 + time.tv_usec() as u64
            };
            Duration::from_micros(micros(user) + micros(system))
        }
        Err(_) => Duration::ZERO,
    }
}

/// Raises this process's open-file limit to its hard limit (children inherit it) and returns the
/// new soft limit. Raising the hard limit itself needs CAP_SYS_RESOURCE, which a sandbox may lack.
pub fn raise_open_file_limit() -> u64 {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 1024,
    }
}

/// The "Max open files" soft limit of another process, from /proc/PID/limits.
pub fn open_file_limit_of(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The 1-, 5- and 15-minute load averages, as /proc/loadavg prints them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}
