//! Readings from `/proc`: CPU time and resident memory of a process.

/// `USER_HZ`, the unit of `utime`/`stime` in `/proc/<pid>/stat` (100 on every Linux platform
/// we run on; `sysconf(_SC_CLK_TCK)` would need `unsafe`).
pub const USER_HZ: u64 = 100;

/// utime + stime of all threads of `pid`, in microseconds (`/proc/<pid>/stat` fields 14 and 15).
pub fn cpu_us(pid: u32) -> std::io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_cpu_us(&text)
        .ok_or_else(|| std::io::Error::other(format!("/proc/{pid}/stat: unexpected format")))
}

/// Resident set size of `pid` in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> std::io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_rss_kib(&text)
        .ok_or_else(|| std::io::Error::other(format!("/proc/{pid}/status: no VmRSS")))
}

fn parse_stat_cpu_us(text: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let rest = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 1_000_000 / USER_HZ)
}

fn parse_status_rss_kib(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line["VmRSS:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_and_status() {
        let stat =
            "4242 (sbc (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 1 2 3";
        assert_eq!(parse_stat_cpu_us(stat), Some(3_250_000));
        let status = "Name:\tsbc\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_status_rss_kib(status), Some(12345));
        assert_eq!(parse_status_rss_kib("Name: x\n"), None);
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        cpu_us(me).unwrap();
    }
}
