//! What /proc says about a process the tests or benchmarks started: memory and CPU time.

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`, ...), in KiB.
pub fn status_kib(pid: i32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resident set size of `pid` in KiB.
pub fn rss_kib(pid: i32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// CPU time (user + system, all threads) `pid` has used so far, in seconds.
pub fn cpu_seconds(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); the first after ')' is field 3.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / USER_HZ)
}

/// /proc counts CPU time in USER_HZ ticks, which the kernel's ABI fixes at 100 on x86 and arm.
const USER_HZ: f64 = 100.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_memory_and_cpu_are_read() {
        let pid = std::process::id() as i32;
        assert!(rss_kib(pid).is_some_and(|k| k > 0));
        assert!(status_kib(pid, "VmHWM").is_some_and(|k| k >= rss_kib(pid).unwrap_or(0) / 2));
        // Burn a little CPU so the figure moves off zero whatever the tick length.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(cpu_seconds(pid).is_some_and(|s| s > 0.0));
        assert_eq!(rss_kib(-1), None);
        assert_eq!(cpu_seconds(-1), None);
    }
}
