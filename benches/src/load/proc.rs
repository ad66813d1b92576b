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

/// Anonymous resident memory of `pid` in KiB (`RssAnon` in `/proc/<pid>/status`): heap, stacks
/// and anonymous mappings, without the file-backed pages of the binary and its libraries.
pub fn rss_anon_kib(pid: u32) -> std::io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_kib(&text, "RssAnon:")
        .ok_or_else(|| std::io::Error::other(format!("/proc/{pid}/status: no RssAnon")))
}

/// Time the threads of `pid` spent runnable but waiting for a CPU, in microseconds (second field
/// of `/proc/<pid>/task/*/schedstat`): how much other work on the same cores held the process
/// back. Threads that ended are not counted.
pub fn wait_us(pid: u32) -> std::io::Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        if let Ok(text) = std::fs::read_to_string(path) {
            total += parse_schedstat_wait_ns(&text).unwrap_or(0) / 1000;
        }
    }
    Ok(total)
}

fn parse_schedstat_wait_ns(text: &str) -> Option<u64> {
    text.split_whitespace().nth(1)?.parse().ok()
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
    parse_status_kib(text, "VmRSS:")
}

fn parse_status_kib(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
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
        let status = "VmRSS:\t   12345 kB\nRssAnon:\t    4321 kB\nRssFile:\t    8024 kB\n";
        assert_eq!(parse_status_kib(status, "RssAnon:"), Some(4321));
        assert_eq!(
            parse_schedstat_wait_ns("2941323431 7846483648 2857\n"),
            Some(7846483648)
        );
        wait_us(std::process::id()).unwrap();
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(rss_anon_kib(me).unwrap() > 0);
        cpu_us(me).unwrap();
    }
}
