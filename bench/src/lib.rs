//! What the benchmark binaries share.

/// One `kB` figure of a `/proc/PID/<file>` (`status`, `smaps_rollup`), in KiB: `field` is the line's label with
/// its colon (`"VmHWM:"`); `pid` may be `"self"`. `None` when the process or the line is gone.
pub fn proc_kib(pid: impl std::fmt::Display, file: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
