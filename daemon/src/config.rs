//! Layered configuration.
//!
//! Files, later ones overriding earlier ones key by key:
//! `ROOT/usr/lib/otter/otter.toml` (vendor defaults), `ROOT/etc/otter/otter.toml`, then
//! `ROOT/etc/otter/conf.d/*.toml` in name order. Each file is checked on its own first (unknown keys and wrong
//! types are reported with the file and the key), then the merged result is validated. Every path in the
//! configuration is absolute on the device and resolved under `ROOT`, so tests and the simulator run in a
//! temporary directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use otter_bootloader::Slot;
use serde::Deserialize;

use crate::engine::RebootPolicy;
use crate::health::{CommandCheck, HealthSettings};

/// A configuration problem: which file, which key, what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file is not valid TOML or has an unknown key or a wrong type.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the key and line).
        message: String,
    },
    /// A value is missing or invalid after merging.
    #[error("{file}: {key}: {message}")]
    Invalid {
        /// The file that set the key last (or "(no file)" for a missing key).
        file: String,
        /// Dotted key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// No configuration file exists at all.
    #[error("no configuration found (looked for {0})")]
    Missing(String),
}

// ----- the file format: every field optional, unknown keys rejected -----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    device: Option<DeviceFile>,
    slots: Option<SlotsFile>,
    bootloader: Option<BootloaderFile>,
    health: Option<HealthFile>,
    reboot: Option<RebootFile>,
    install: Option<InstallFile>,
    server: Option<ServerFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceFile {
    compatible: Option<String>,
    keyring_dir: Option<String>,
    state_dir: Option<String>,
    cmdline: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlotsFile {
    a: Option<String>,
    b: Option<String>,
    root_a: Option<String>,
    root_b: Option<String>,
    size: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BootloaderFile {
    backend: Option<String>,
    scheme: Option<String>,
    attempts: Option<u32>,
    fw_env_config: Option<String>,
    lock_file: Option<String>,
    grubenv: Option<String>,
    mender_part_a: Option<u32>,
    mender_part_b: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthFile {
    commit_deadline: Option<String>,
    units: Option<Vec<String>>,
    check_dir: Option<String>,
    script_timeout: Option<String>,
    systemctl: Option<String>,
    command: Option<Vec<CommandFile>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandFile {
    name: Option<String>,
    run: Vec<String>,
    timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RebootFile {
    policy: Option<String>,
    window: Option<String>,
    command: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstallFile {
    max_window_mib: Option<u64>,
    skip_identical: Option<bool>,
    decoders: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerFile {
    enabled: Option<bool>,
    url: Option<String>,
    tenant: Option<String>,
    controller_id: Option<String>,
    auth: Option<String>,
    token: Option<String>,
    token_file: Option<String>,
    ca_bundle: Option<String>,
    client_identity: Option<String>,
    poll_min: Option<String>,
    poll_max: Option<String>,
    backoff_initial: Option<String>,
    backoff_max: Option<String>,
    jitter_percent: Option<u32>,
    auto_confirm: Option<bool>,
    progress_interval: Option<String>,
    inventory_dir: Option<String>,
    timeout: Option<String>,
    max_resumes: Option<u32>,
    resume_backoff: Option<String>,
    allow_insecure_downloads: Option<bool>,
    stall_timeout: Option<String>,
}

// ----- validated settings -----

/// How the device proves its identity to the update server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAuth {
    /// No credentials (a test server, or a proxy that authenticates otherwise).
    None,
    /// `Authorization: TargetToken <token>` (per device).
    TargetToken(String),
    /// `Authorization: GatewayToken <token>` (per tenant).
    GatewayToken(String),
    /// A client certificate (mutual TLS, terminated by a proxy in front of hawkBit); no Authorization header.
    Certificate,
}

/// The `[server]` section: the hawkBit DDI client.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    /// Server base URL, without a trailing slash (`https://hawkbit.example.com`).
    pub url: String,
    /// Tenant (`DEFAULT`).
    pub tenant: String,
    /// This device's controller id.
    pub controller_id: String,
    /// Credentials.
    pub auth: ServerAuth,
    /// PEM CA bundle trusted instead of the system roots, resolved under the root.
    pub ca_bundle: Option<PathBuf>,
    /// PEM client certificate + key for mutual TLS, resolved under the root.
    pub client_identity: Option<PathBuf>,
    /// Shortest poll interval, whatever the server's `sleep` says.
    pub poll_min: Duration,
    /// Longest poll interval (also used when the server sends no `sleep`).
    pub poll_max: Duration,
    /// First retry delay after a failed poll; doubles per failure.
    pub backoff_initial: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Random spread of each interval, percent (0-50).
    pub jitter_percent: u32,
    /// Confirm `confirmationBase` requests automatically; otherwise ask local applications.
    pub auto_confirm: bool,
    /// Shortest time between two progress feedbacks for one action.
    pub progress_interval: Duration,
    /// Directory of inventory executables (`key=value` lines), resolved under the root.
    pub inventory_dir: PathBuf,
    /// Timeout of each DDI request (connect, and each wait for data).
    pub timeout: Duration,
    /// Resumes of a dropped artifact download before giving up.
    pub max_resumes: u32,
    /// First wait before resuming a download; doubles per attempt.
    pub resume_backoff: Duration,
    /// Accept plain `http://` artifact links from a server reached over `https` (off: refused as
    /// `insecure-link`).
    pub allow_insecure_downloads: bool,
    /// A download that delivers almost nothing (under 4 KiB) for this long is stalled: resumed, and failed as
    /// `stalled` once the resumes run out. 1 s to 1 hour; default 2 minutes.
    pub stall_timeout: Duration,
}

/// Which bootloader and how its environment is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootloaderSettings {
    /// U-Boot environment.
    UBoot {
        /// `fw_env.config`, resolved under the root.
        fw_env_config: PathBuf,
        /// libubootenv's lock file, resolved under the root.
        lock_file: PathBuf,
        /// Variable scheme.
        scheme: otter_bootloader::uboot::UBootScheme,
    },
    /// GRUB environment block.
    Grub {
        /// The grubenv file, resolved under the root.
        grubenv: PathBuf,
    },
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Root all paths are resolved under (`/` on a device).
    pub root: PathBuf,
    /// Device type, matched against artifacts' `compatible`.
    pub compatible: String,
    /// Directory of trusted `*.pub` keys.
    pub keyring_dir: PathBuf,
    /// Persistent state directory (on the data partition, shared by both slots).
    pub state_dir: PathBuf,
    /// The kernel command line file (`/proc/cmdline`).
    pub cmdline: PathBuf,
    /// Slot A device or file.
    pub slot_a: PathBuf,
    /// Slot B device or file.
    pub slot_b: PathBuf,
    /// `root=` values identifying each slot, for command lines without `otter.slot=`.
    pub root_map: Vec<(String, Slot)>,
    /// Size limit for file-backed slots.
    pub slot_size: Option<u64>,
    /// Bootloader.
    pub bootloader: BootloaderSettings,
    /// Health checks.
    pub health: HealthSettings,
    /// Seconds a trial boot has to pass its checks.
    pub commit_deadline: Duration,
    /// Reboot policy.
    pub reboot_policy: RebootPolicy,
    /// Reboot command.
    pub reboot_command: Vec<String>,
    /// Largest zstd window accepted, bytes.
    pub max_window: u64,
    /// Skip rewriting identical chunks.
    pub skip_identical: bool,
    /// Decoding threads of an install (`install.decoders`); 0: one per CPU, at most 4. Each one is a chunk
    /// buffer or two of memory during an install.
    pub decoders: usize,
    /// The update server (hawkBit DDI), when configured and enabled.
    pub server: Option<ServerSettings>,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
}

impl Settings {
    /// The device or file of `slot`.
    pub fn slot_path(&self, slot: Slot) -> &Path {
        match slot {
            Slot::A => &self.slot_a,
            Slot::B => &self.slot_b,
        }
    }
}

/// The configuration files under `root`, in the order they apply.
pub fn config_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("usr/lib/otter/otter.toml"), root.join("etc/otter/otter.toml")];
    if let Ok(rd) = std::fs::read_dir(root.join("etc/otter/conf.d")) {
        let mut dropins: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        dropins.sort();
        files.extend(dropins);
    }
    files
}

/// The longest duration any key accepts: 7 days. Longer values are typos or attacks on the arithmetic (an
/// instant that far ahead overflows, and with `panic = "abort"` that kills the daemon).
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Parses a duration: `90s`, `10m`, `1h`, `500ms`, or a plain number of seconds; at most [`MAX_DURATION`]
/// (checked, never wrapped).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration like \"90s\", \"10m\" or \"1h\""))?;
    let secs = |per: u64| n.checked_mul(per).map(Duration::from_secs);
    let d = match unit.trim() {
        "" | "s" => secs(1),
        "ms" => Some(Duration::from_millis(n)),
        "m" | "min" => secs(60),
        "h" => secs(3600),
        u => return Err(format!("unknown unit {u:?} in {s:?} (use ms, s, m or h)")),
    };
    match d {
        Some(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(format!("{s:?} is longer than the maximum of 7 days")),
    }
}

/// Checks that a duration lies within `min..=max`; the message names the bounds.
fn within(d: Duration, min: Duration, max: Duration) -> Result<Duration, String> {
    if d < min || d > max {
        return Err(format!("{} is not between {} and {}", show(d), show(min), show(max)));
    }
    Ok(d)
}

/// A duration as the configuration writes it.
fn show(d: Duration) -> String {
    if d.subsec_millis() != 0 { format!("{}ms", d.as_millis()) } else { format!("{}s", d.as_secs()) }
}

/// Bounds of `health.commit_deadline`: 10 s to 24 h.
pub const COMMIT_DEADLINE: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(24 * 3600));
/// Bounds of `health.script_timeout` and `health.command[].timeout`: 1 s to 1 h (0 s would fail every check,
/// rolling back every update).
pub const CHECK_TIMEOUT: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3600));
/// Bounds of `install.max_window_mib`: 1 to 1024 MiB (the decoder's window is memory the device must have).
pub const MAX_WINDOW_MIB: (u64, u64) = (1, 1024);
/// Bounds of `install.decoders`: 1 to 16 threads.
pub const DECODERS: (usize, usize) = (1, 16);

fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.trim().split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// Merges `over` into `base`, tables recursively, everything else replaced; records which file set each key.
fn merge(base: &mut toml::Table, over: toml::Table, file: &str, prefix: &str, origin: &mut BTreeMap<String, String>) {
    for (k, v) in over {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            toml::Value::Table(o) => {
                let entry = base.entry(k).or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if !entry.is_table() {
                    *entry = toml::Value::Table(toml::Table::new());
                }
                if let toml::Value::Table(b) = entry {
                    merge(b, o, file, &key, origin);
                }
            }
            v => {
                origin.insert(key, file.to_owned());
                base.insert(k, v);
            }
        }
    }
}

/// Loads and validates the configuration under `root`.
pub fn load(root: &Path) -> Result<Settings, ConfigError> {
    let candidates = config_files(root);
    let mut merged = toml::Table::new();
    let mut origin = BTreeMap::new();
    let mut files = Vec::new();
    for path in &candidates {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(ConfigError::Read { path: path.clone(), source }),
        };
        let syntax = |message: String| ConfigError::Syntax { path: path.clone(), message };
        // Each file on its own: unknown keys and wrong types are reported against the file that has them.
        let table: toml::Table = toml::from_str(&text).map_err(|e| syntax(e.to_string().trim().to_owned()))?;
        toml::from_str::<File>(&text).map_err(|e| syntax(e.to_string().trim().to_owned()))?;
        merge(&mut merged, table, &path.display().to_string(), "", &mut origin);
        files.push(path.clone());
    }
    if files.is_empty() {
        let list: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        return Err(ConfigError::Missing(list.join(", ")));
    }
    let file: File = toml::Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Syntax { path: "(merged)".into(), message: e.to_string() })?;
    validate(root, file, &origin, files)
}

fn validate(
    root: &Path,
    f: File,
    origin: &BTreeMap<String, String>,
    files: Vec<PathBuf>,
) -> Result<Settings, ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        file: origin.get(key).cloned().unwrap_or_else(|| "(no file)".into()),
        key: key.to_owned(),
        message,
    };
    let required = |key: &str, v: Option<String>| v.ok_or_else(|| invalid(key, "is required".into()));
    let path = |key: &str, v: String| -> Result<PathBuf, ConfigError> {
        let rel = v.strip_prefix('/').ok_or_else(|| invalid(key, format!("{v:?} must be an absolute path")))?;
        Ok(root.join(rel))
    };
    let duration = |key: &str, v: Option<String>, default: Duration| -> Result<Duration, ConfigError> {
        v.map_or(Ok(default), |s| parse_duration(&s).map_err(|m| invalid(key, m)))
    };

    let device = f.device.unwrap_or_default();
    let compatible = required("device.compatible", device.compatible)?;
    if compatible.is_empty() {
        return Err(invalid("device.compatible", "must not be empty".into()));
    }
    let keyring_dir = path("device.keyring_dir", device.keyring_dir.unwrap_or_else(|| "/etc/otter/keys".into()))?;
    let state_dir = path("device.state_dir", device.state_dir.unwrap_or_else(|| "/var/lib/otter".into()))?;
    let cmdline = path("device.cmdline", device.cmdline.unwrap_or_else(|| "/proc/cmdline".into()))?;

    let slots = f.slots.unwrap_or_default();
    let slot_a = path("slots.a", required("slots.a", slots.a)?)?;
    let slot_b = path("slots.b", required("slots.b", slots.b)?)?;
    if slot_a == slot_b {
        return Err(invalid("slots.b", "slot A and slot B are the same device".into()));
    }
    let mut root_map = Vec::new();
    if let Some(r) = slots.root_a {
        root_map.push((r, Slot::A));
    }
    if let Some(r) = slots.root_b {
        root_map.push((r, Slot::B));
    }

    let bl = f.bootloader.unwrap_or_default();
    let attempts = bl.attempts.unwrap_or(otter_bootloader::uboot::DEFAULT_ATTEMPTS);
    if !(1..=otter_bootloader::scheme::MAX_ATTEMPTS).contains(&attempts) {
        return Err(invalid("bootloader.attempts", format!("{attempts} is not between 1 and 9")));
    }
    let bootloader = match bl.backend.as_deref().unwrap_or("uboot") {
        "uboot" => {
            use otter_bootloader::uboot::UBootScheme;
            let scheme = match bl.scheme.as_deref().unwrap_or("boot-order") {
                "boot-order" => UBootScheme::BootOrder { attempts },
                "mender" => UBootScheme::Mender {
                    part_a: bl.mender_part_a.unwrap_or(2),
                    part_b: bl.mender_part_b.unwrap_or(3),
                    attempts,
                },
                other => {
                    return Err(invalid(
                        "bootloader.scheme",
                        format!("unknown scheme {other:?} (use \"boot-order\" or \"mender\")"),
                    ));
                }
            };
            BootloaderSettings::UBoot {
                fw_env_config: path(
                    "bootloader.fw_env_config",
                    bl.fw_env_config.unwrap_or_else(|| "/etc/fw_env.config".into()),
                )?,
                lock_file: path(
                    "bootloader.lock_file",
                    bl.lock_file.unwrap_or_else(|| otter_bootloader::uboot::DEFAULT_LOCK_PATH.into()),
                )?,
                scheme,
            }
        }
        "grub" => BootloaderSettings::Grub {
            grubenv: path("bootloader.grubenv", bl.grubenv.unwrap_or_else(|| "/boot/grub/grubenv".into()))?,
        },
        other => {
            return Err(invalid(
                "bootloader.backend",
                format!("unknown backend {other:?} (use \"uboot\" or \"grub\")"),
            ));
        }
    };

    let h = f.health.unwrap_or_default();
    let bounded = |key: &str, v: Option<String>, default: Duration, (min, max): (Duration, Duration)| {
        duration(key, v, default).and_then(|d| within(d, min, max).map_err(|m| invalid(key, m)))
    };
    let commit_deadline =
        bounded("health.commit_deadline", h.commit_deadline, Duration::from_secs(600), COMMIT_DEADLINE)?;
    let script_timeout = bounded("health.script_timeout", h.script_timeout, Duration::from_secs(60), CHECK_TIMEOUT)?;
    let mut commands = Vec::new();
    for (i, c) in h.command.unwrap_or_default().into_iter().enumerate() {
        let key = format!("health.command[{i}]");
        if c.run.is_empty() {
            return Err(invalid("health.command", format!("{key}.run must name a program")));
        }
        let timeout = match c.timeout {
            Some(t) => parse_duration(&t)
                .and_then(|d| within(d, CHECK_TIMEOUT.0, CHECK_TIMEOUT.1))
                .map_err(|m| invalid("health.command", format!("{key}.timeout: {m}")))?,
            None => Duration::from_secs(60),
        };
        commands.push(CommandCheck { name: c.name.unwrap_or_else(|| c.run[0].clone()), argv: c.run, timeout });
    }
    let health = HealthSettings {
        commands,
        units: h.units.unwrap_or_default(),
        check_dir: Some(path("health.check_dir", h.check_dir.unwrap_or_else(|| "/etc/otter/health.d".into()))?),
        script_timeout,
        systemctl: PathBuf::from(h.systemctl.unwrap_or_else(|| "systemctl".into())),
    };

    let r = f.reboot.unwrap_or_default();
    let reboot_policy = match r.policy.as_deref().unwrap_or("immediate") {
        "immediate" => RebootPolicy::Immediate,
        "manual" => RebootPolicy::Manual,
        "window" => {
            let w = r.window.ok_or_else(|| invalid("reboot.policy", "policy \"window\" needs reboot.window".into()))?;
            let (s, e) = w
                .split_once('-')
                .and_then(|(s, e)| Some((parse_hhmm(s)?, parse_hhmm(e)?)))
                .ok_or_else(|| invalid("reboot.window", format!("{w:?} is not like \"02:00-04:00\"")))?;
            if s == e {
                return Err(invalid("reboot.window", "start and end are equal".into()));
            }
            RebootPolicy::Window { start: s, end: e }
        }
        other => {
            return Err(invalid(
                "reboot.policy",
                format!("unknown policy {other:?} (use \"immediate\", \"manual\" or \"window\")"),
            ));
        }
    };
    let reboot_command = r.command.unwrap_or_else(|| vec!["systemctl".into(), "reboot".into()]);
    if reboot_command.is_empty() {
        return Err(invalid("reboot.command", "must name a program".into()));
    }

    let server = match f.server {
        Some(sf) if sf.enabled.unwrap_or(true) => Some(server_settings(sf, &invalid, &path)?),
        _ => None,
    };

    let i = f.install.unwrap_or_default();
    let window_mib = i.max_window_mib.unwrap_or(8);
    if !(MAX_WINDOW_MIB.0..=MAX_WINDOW_MIB.1).contains(&window_mib) {
        return Err(invalid(
            "install.max_window_mib",
            format!("{window_mib} is not between {} and {}", MAX_WINDOW_MIB.0, MAX_WINDOW_MIB.1),
        ));
    }
    if let Some(n) = i.decoders
        && !(DECODERS.0..=DECODERS.1).contains(&n)
    {
        return Err(invalid("install.decoders", format!("{n} is not between {} and {}", DECODERS.0, DECODERS.1)));
    }
    Ok(Settings {
        root: root.to_owned(),
        compatible,
        keyring_dir,
        state_dir,
        cmdline,
        slot_a,
        slot_b,
        root_map,
        slot_size: slots.size,
        bootloader,
        health,
        commit_deadline,
        reboot_policy,
        reboot_command,
        max_window: window_mib << 20,
        skip_identical: i.skip_identical.unwrap_or(false),
        decoders: i.decoders.unwrap_or(0),
        server,
        files,
    })
}

fn server_settings(
    sf: ServerFile,
    invalid: &dyn Fn(&str, String) -> ConfigError,
    path: &dyn Fn(&str, String) -> Result<PathBuf, ConfigError>,
) -> Result<ServerSettings, ConfigError> {
    let duration = |key: &str, v: Option<String>, default: Duration| -> Result<Duration, ConfigError> {
        let d = v.map_or(Ok(default), |s| parse_duration(&s).map_err(|m| invalid(key, m)))?;
        if d.is_zero() {
            return Err(invalid(key, "must be longer than zero".into()));
        }
        Ok(d)
    };
    let url = sf.url.ok_or_else(|| invalid("server.url", "is required".into()))?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(invalid("server.url", format!("{url:?} must start with http:// or https://")));
    }
    let url = url.trim_end_matches('/').to_owned();
    let tenant = sf.tenant.unwrap_or_else(|| "DEFAULT".into());
    let controller_id = sf.controller_id.ok_or_else(|| invalid("server.controller_id", "is required".into()))?;
    let id_ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if !id_ok(&controller_id) {
        return Err(invalid("server.controller_id", format!("{controller_id:?} must be non-empty [A-Za-z0-9-_.:]")));
    }
    if !id_ok(&tenant) {
        return Err(invalid("server.tenant", format!("{tenant:?} must be non-empty [A-Za-z0-9-_.:]")));
    }
    let token = match (sf.token, sf.token_file) {
        (Some(_), Some(_)) => return Err(invalid("server.token_file", "set server.token or server.token_file".into())),
        (Some(t), None) => Some(t),
        (None, Some(f)) => {
            let p = path("server.token_file", f)?;
            let t = std::fs::read_to_string(&p)
                .map_err(|e| invalid("server.token_file", format!("{}: {e}", p.display())))?;
            Some(t.trim().to_owned())
        }
        (None, None) => None,
    };
    let need_token = |kind: &str| {
        token
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| invalid("server.auth", format!("auth {kind:?} needs server.token or server.token_file")))
    };
    let client_identity = sf.client_identity.map(|p| path("server.client_identity", p)).transpose()?;
    let auth = match sf.auth.as_deref().unwrap_or("target-token") {
        "none" => ServerAuth::None,
        "target-token" => ServerAuth::TargetToken(need_token("target-token")?),
        "gateway-token" => ServerAuth::GatewayToken(need_token("gateway-token")?),
        "certificate" => {
            if client_identity.is_none() {
                return Err(invalid("server.auth", "auth \"certificate\" needs server.client_identity".into()));
            }
            ServerAuth::Certificate
        }
        other => {
            return Err(invalid(
                "server.auth",
                format!(
                    "unknown auth {other:?} (use \"target-token\", \"gateway-token\", \"certificate\" or \"none\")"
                ),
            ));
        }
    };
    let poll_min = duration("server.poll_min", sf.poll_min, Duration::from_secs(10))?;
    let poll_max = duration("server.poll_max", sf.poll_max, Duration::from_secs(24 * 3600))?;
    if poll_max < poll_min {
        return Err(invalid("server.poll_max", "is shorter than server.poll_min".into()));
    }
    let backoff_initial = duration("server.backoff_initial", sf.backoff_initial, Duration::from_secs(30))?;
    let backoff_max = duration("server.backoff_max", sf.backoff_max, Duration::from_secs(3600))?;
    if backoff_max < backoff_initial {
        return Err(invalid("server.backoff_max", "is shorter than server.backoff_initial".into()));
    }
    let jitter_percent = sf.jitter_percent.unwrap_or(10);
    if jitter_percent > 50 {
        return Err(invalid("server.jitter_percent", format!("{jitter_percent} is not between 0 and 50")));
    }
    let stall_timeout = duration("server.stall_timeout", sf.stall_timeout, otter_installer::DEFAULT_STALL_TIMEOUT)?;
    if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&stall_timeout) {
        return Err(invalid("server.stall_timeout", format!("{stall_timeout:?} is not between 1s and 1h")));
    }
    Ok(ServerSettings {
        url,
        tenant,
        controller_id,
        auth,
        ca_bundle: sf.ca_bundle.map(|p| path("server.ca_bundle", p)).transpose()?,
        client_identity,
        poll_min,
        poll_max,
        backoff_initial,
        backoff_max,
        jitter_percent,
        auto_confirm: sf.auto_confirm.unwrap_or(true),
        progress_interval: duration("server.progress_interval", sf.progress_interval, Duration::from_secs(10))?,
        inventory_dir: path(
            "server.inventory_dir",
            sf.inventory_dir.unwrap_or_else(|| "/etc/otter/inventory.d".into()),
        )?,
        timeout: duration("server.timeout", sf.timeout, Duration::from_secs(30))?,
        max_resumes: sf.max_resumes.unwrap_or(8),
        resume_backoff: duration("server.resume_backoff", sf.resume_backoff, Duration::from_secs(1))?,
        allow_insecure_downloads: sf.allow_insecure_downloads.unwrap_or(false),
        stall_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    const MINIMAL: &str = "[device]\ncompatible = \"gw\"\n[slots]\na = \"/dev/a\"\nb = \"/dev/b\"\n";

    #[test]
    fn server_section() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "etc/otter/otter.toml", MINIMAL);
        assert!(load(d.path()).unwrap().server.is_none());
        write(
            d.path(),
            "etc/otter/conf.d/10-server.toml",
            "[server]\nurl = \"https://hb.example/\"\ncontroller_id = \"gw-1\"\ntoken_file = \"/etc/otter/token\"\n",
        );
        write(d.path(), "etc/otter/token", "s3cret\n");
        let s = load(d.path()).unwrap().server.unwrap();
        assert_eq!(s.url, "https://hb.example");
        assert_eq!(s.tenant, "DEFAULT");
        assert_eq!(s.auth, ServerAuth::TargetToken("s3cret".into()));
        assert_eq!(s.inventory_dir, d.path().join("etc/otter/inventory.d"));
        assert_eq!(s.poll_min, Duration::from_secs(10));
        let bad = [
            ("poll_min = \"0s\"", "server.poll_min"),
            ("poll_min = \"2h\"\npoll_max = \"1h\"", "server.poll_max"),
            ("auth = \"certificate\"", "server.auth"),
            ("auth = \"kerberos\"", "server.auth"),
            ("jitter_percent = 90", "server.jitter_percent"),
            ("enabled = true\nurl = \"ftp://x\"", "server.url"),
        ];
        for (extra, key) in bad {
            write(d.path(), "etc/otter/conf.d/20-bad.toml", &format!("[server]\n{extra}\n"));
            let e = load(d.path()).unwrap_err().to_string();
            assert!(e.contains(key), "{extra}: {e}");
        }
        write(d.path(), "etc/otter/conf.d/20-bad.toml", "[server]\nenabled = false\n");
        assert!(load(d.path()).unwrap().server.is_none());
    }

    #[test]
    fn server_download_keys_are_bounded() {
        let d = tempfile::tempdir().unwrap();
        let server = "[server]\nurl = \"https://hb.example\"\ncontroller_id = \"gw-1\"\nauth = \"none\"\n";
        write(d.path(), "etc/otter/otter.toml", &format!("{MINIMAL}{server}"));
        let s = load(d.path()).unwrap().server.unwrap();
        assert!(!s.allow_insecure_downloads, "plain http links are refused by default");
        assert_eq!(s.stall_timeout, Duration::from_secs(120));
        write(
            d.path(),
            "etc/otter/conf.d/20.toml",
            "[server]\nstall_timeout = \"5s\"\nallow_insecure_downloads = true\n",
        );
        let s = load(d.path()).unwrap().server.unwrap();
        assert_eq!((s.stall_timeout, s.allow_insecure_downloads), (Duration::from_secs(5), true));
        for bad in ["0s", "500ms", "2h"] {
            write(d.path(), "etc/otter/conf.d/20.toml", &format!("[server]\nstall_timeout = \"{bad}\"\n"));
            let e = load(d.path()).unwrap_err().to_string();
            assert!(e.contains("server.stall_timeout"), "{bad}: {e}");
        }
    }

    #[test]
    fn layers_override_in_order() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "usr/lib/otter/otter.toml", &format!("{MINIMAL}[reboot]\npolicy = \"manual\"\n"));
        write(d.path(), "etc/otter/otter.toml", "[health]\ncommit_deadline = \"2m\"\n");
        write(d.path(), "etc/otter/conf.d/20-window.toml", "[reboot]\npolicy = \"window\"\nwindow = \"23:30-01:00\"\n");
        write(d.path(), "etc/otter/conf.d/10-first.toml", "[reboot]\npolicy = \"immediate\"\n");
        let s = load(d.path()).unwrap();
        assert_eq!(s.compatible, "gw");
        assert_eq!(s.slot_a, d.path().join("dev/a"));
        assert_eq!(s.commit_deadline, Duration::from_secs(120));
        assert_eq!(s.reboot_policy, RebootPolicy::Window { start: 23 * 60 + 30, end: 60 });
        assert_eq!(s.files.len(), 4);
        assert_eq!(s.files[2].file_name().unwrap(), "10-first.toml");
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "etc/otter/otter.toml", MINIMAL);
        write(d.path(), "etc/otter/conf.d/50-typo.toml", "[health]\ncommit_dedline = \"5m\"\n");
        let e = load(d.path()).unwrap_err().to_string();
        assert!(e.contains("50-typo.toml"), "{e}");
        assert!(e.contains("commit_dedline"), "{e}");
    }

    #[test]
    fn wrong_type_names_file_and_key() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "etc/otter/otter.toml", &format!("{MINIMAL}[bootloader]\nattempts = \"three\"\n"));
        let e = load(d.path()).unwrap_err().to_string();
        assert!(e.contains("otter.toml") && e.contains("attempts"), "{e}");
    }

    #[test]
    fn invalid_values_name_the_file_that_set_them() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "usr/lib/otter/otter.toml", MINIMAL);
        write(d.path(), "etc/otter/conf.d/90-bad.toml", "[bootloader]\nattempts = 12\n");
        match load(d.path()).unwrap_err() {
            ConfigError::Invalid { file, key, message } => {
                assert!(file.ends_with("90-bad.toml"), "{file}");
                assert_eq!(key, "bootloader.attempts");
                assert!(message.contains("between 1 and 9"));
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn missing_required_and_bad_values() {
        let cases = [
            ("[slots]\na = \"/dev/a\"\nb = \"/dev/b\"\n", "device.compatible"),
            ("[device]\ncompatible = \"gw\"\n[slots]\na = \"/dev/a\"\n", "slots.b"),
            (&format!("{MINIMAL}[reboot]\npolicy = \"sometimes\"\n"), "reboot.policy"),
            (&format!("{MINIMAL}[reboot]\npolicy = \"window\"\nwindow = \"25:00-01:00\"\n"), "reboot.window"),
            (&format!("{MINIMAL}[health]\ncommit_deadline = \"ten minutes\"\n"), "health.commit_deadline"),
            ("[device]\ncompatible = \"gw\"\n[slots]\na = \"dev/a\"\nb = \"/dev/b\"\n", "slots.a"),
            (&format!("{MINIMAL}[bootloader]\nbackend = \"lilo\"\n"), "bootloader.backend"),
        ];
        for (text, key) in cases {
            let d = tempfile::tempdir().unwrap();
            write(d.path(), "etc/otter/otter.toml", text);
            let e = load(d.path()).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn no_files_at_all() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(load(d.path()), Err(ConfigError::Missing(_))));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        // Checked, never wrapped: 307445734561825861 minutes used to become 44 s.
        assert!(parse_duration("307445734561825861m").is_err());
        assert!(parse_duration("18446744073709551615").is_err());
        assert_eq!(parse_duration("7d").unwrap_err(), "unknown unit \"d\" in \"7d\" (use ms, s, m or h)");
        assert_eq!(parse_duration("168h").unwrap(), MAX_DURATION);
        assert!(parse_duration("169h").is_err());
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("m").is_err());
    }
}
