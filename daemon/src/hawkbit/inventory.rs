//! The device's attributes for `configData`: what an operator wants to see in the hawkBit UI. Every path is
//! under the configured root; a missing source leaves its attribute out.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use otter_bootloader::Slot;

use crate::config::Settings;
use crate::runtime::Status;

/// hawkBit keeps at most this many attributes per target.
pub const MAX_ATTRIBUTES: usize = 100;
/// How long one inventory executable may run (10 seconds).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(10);

fn read_trimmed(path: &Path) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim().trim_end_matches('\0').to_owned();
    (!s.is_empty()).then_some(s)
}

/// `VERSION_ID` (or `VERSION`) of an os-release file.
fn os_version(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim_matches('"').to_owned());
    field("VERSION_ID=").or_else(|| field("VERSION="))
}

/// CPU temperature in °C from the first thermal zone whose type mentions the CPU (or the first zone).
fn cpu_temperature(root: &Path) -> Option<String> {
    let dir = root.join("sys/class/thermal");
    let mut zones: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("thermal_zone")))
        .collect();
    zones.sort();
    let is_cpu = |p: &Path| {
        read_trimmed(&p.join("type")).is_some_and(|t| t.to_lowercase().contains("cpu") || t.contains("x86_pkg"))
    };
    let zone = zones.iter().find(|p| is_cpu(p)).or(zones.first())?;
    let milli: i64 = read_trimmed(&zone.join("temp"))?.parse().ok()?;
    Some(format!("{:.1}", milli as f64 / 1000.0))
}

/// Runs one inventory executable; `key=value` lines of its output become attributes.
fn run_script(path: &Path, out: &mut BTreeMap<String, String>) {
    let child = Command::new(path).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return tracing::warn!("inventory: cannot run {}: {e}", path.display()),
    };
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() < SCRIPT_TIMEOUT => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return tracing::warn!("inventory: {} took longer than {SCRIPT_TIMEOUT:?}; ignored", path.display());
            }
        }
    }
    let mut text = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut text);
    }
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            let k = k.trim();
            if !k.is_empty() && k.len() <= 32 && !k.contains(char::is_whitespace) {
                out.insert(k.to_owned(), v.trim().chars().take(128).collect());
            }
        }
    }
}

fn slot_states(settings: &Settings) -> Option<String> {
    let b = crate::runtime::open_bootloader(settings).ok()?;
    let word = |s: Slot| format!("{s}:{:?}", b.slot_state(s)).to_lowercase();
    Some(format!("{} {}", word(Slot::A), word(Slot::B)))
}

/// Collects the attributes.
pub fn collect(settings: &Settings, status: &Status, inventory_dir: &Path) -> BTreeMap<String, String> {
    let root = &settings.root;
    let mut a = BTreeMap::new();
    a.insert("device_type".into(), settings.compatible.clone());
    a.insert("otter_version".into(), env!("CARGO_PKG_VERSION").into());
    if let Some(v) = os_version(&root.join("etc/os-release")) {
        a.insert("os_version".into(), v);
    }
    if let Some(s) = status.booted {
        a.insert("slot_booted".into(), s.to_string());
    }
    if let Some(s) = status.primary {
        a.insert("slot_next".into(), s.to_string());
    }
    if let Some(s) = slot_states(settings) {
        a.insert("slot_states".into(), s);
    }
    if let Some(k) = read_trimmed(&root.join("proc/sys/kernel/osrelease")) {
        a.insert("kernel".into(), k);
    }
    if let Some(m) = read_trimmed(&root.join("etc/machine-id")) {
        a.insert("machine_id".into(), m);
    }
    let serial = read_trimmed(&root.join("sys/firmware/devicetree/base/serial-number"))
        .or_else(|| read_trimmed(&root.join("sys/class/dmi/id/product_serial")));
    if let Some(s) = serial {
        a.insert("serial".into(), s);
    }
    if let Ok(st) = nix::sys::statvfs::statvfs(&settings.state_dir) {
        // The field types differ between targets (32-bit ARM gateways), hence the casts.
        #[allow(clippy::unnecessary_cast)]
        let free = st.blocks_available() as u64 * st.fragment_size() as u64;
        a.insert("storage_free_mib".into(), (free >> 20).to_string());
    }
    if let Some(up) =
        read_trimmed(&root.join("proc/uptime")).and_then(|u| u.split_whitespace().next().map(str::to_owned))
        && let Ok(secs) = up.parse::<f64>()
    {
        a.insert("uptime_s".into(), format!("{}", secs as u64));
    }
    if let Some(t) = cpu_temperature(root) {
        a.insert("cpu_temp_c".into(), t);
    }
    if let Some(r) = &status.last {
        let version = r.job.artifact.as_ref().map_or("?", |a| a.version.as_str());
        a.insert("last_update".into(), format!("{} {version} (job {})", r.outcome.word(), r.job.id));
    }
    if let Ok(rd) = std::fs::read_dir(inventory_dir) {
        let mut scripts: Vec<_> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
        scripts.sort();
        for s in scripts {
            use std::os::unix::fs::PermissionsExt;
            if s.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0) {
                run_script(&s, &mut a);
            }
        }
    }
    while a.len() > MAX_ATTRIBUTES {
        let last = a.keys().next_back().cloned().expect("non-empty");
        a.remove(&last);
    }
    a
}
