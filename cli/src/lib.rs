//! otterctl: the command-line client of otterd's D-Bus API (`io.otter.Updater1`, see `docs/dbus-api.md`).
//!
//! It depends on the API crate only, never on the daemon. Each subcommand is one or two D-Bus calls; `install`
//! follows the job through the `Progress` property and the `Completed` signal.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use otter_api::{Error as ApiError, HistoryEntry, SlotInfo, Updater1Proxy};
use serde_json::json;
use zbus::zvariant::Value;

/// `println!` that hands back the write error instead of panicking: stdout may be a pipe its reader closed
/// (`otterctl history | head`), and [`is_closed_pipe`] lets `main` end quietly then.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(anyhow::Error::from)
    }};
}

/// `eprintln!` that never panics (stderr may be a closed pipe too; there is nowhere left to report that).
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// `eprint!` that never panics.
macro_rules! err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// Whether `e` comes from writing to a pipe whose reader is gone (`otterctl history | head`): not an error to
/// report, the reader has all it wanted.
pub fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// Exit code: the job failed or was rolled back, or a call failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: bad usage (clap's own).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the job was cancelled.
pub const EXIT_CANCELLED: u8 = 3;

/// Command line.
#[derive(Debug, Parser)]
#[command(name = "otterctl", version, about = "Control the otter update daemon (otterd) over D-Bus")]
pub struct Cli {
    /// Talk to otterd on the session bus instead of the system bus.
    #[arg(long, global = true, conflicts_with = "address")]
    pub session: bool,
    /// Talk to otterd on the bus at this address (e.g. unix:path=/run/test/bus).
    #[arg(long, global = true, value_name = "ADDRESS")]
    pub address: Option<String>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Show what otterd is doing.
    Status,
    /// Install an artifact from a file or an http(s) URL and follow it until it is installed.
    Install {
        /// File path or URL.
        source: String,
        /// Return once the job was accepted.
        #[arg(long)]
        no_wait: bool,
        /// Extra HTTP header for a URL source, "Name: value" (repeatable).
        #[arg(long)]
        header: Vec<String>,
        /// PEM CA bundle to trust for https instead of the system roots (a path otterd can read).
        #[arg(long)]
        tls_ca: Option<String>,
        /// PEM file with a client certificate and its key, for mutual TLS (a path otterd can read).
        #[arg(long)]
        tls_cert: Option<String>,
    },
    /// Cancel the update in progress (possible until the reboot into the new slot).
    Cancel,
    /// Ask the update server client to poll now.
    Check,
    /// List the updates the server holds back until someone here consents.
    Confirmations,
    /// Consent to the update of a server action (or decline it with --deny).
    Confirm {
        /// The server's action id (see `confirmations`).
        action: String,
        /// Decline instead of consenting.
        #[arg(long)]
        deny: bool,
        /// A note for the server.
        #[arg(long, default_value = "")]
        details: String,
    },
    /// Reboot into the installed slot (manual reboot policy).
    Reboot,
    /// Mark a slot good, bad or active.
    Mark {
        /// good, bad or active.
        #[arg(value_parser = ["good", "bad", "active"])]
        state: String,
        /// booted, other, A or B.
        #[arg(default_value = "booted", value_parser = ["booted", "other", "A", "B", "a", "b"])]
        slot: String,
    },
    /// Show both slots.
    Slots,
    /// Show finished jobs.
    History,
    /// Run a command while holding an inhibitor: no install starts and no reboot happens meanwhile.
    Inhibit {
        /// Why (shown to others and logged by otterd).
        #[arg(long)]
        why: String,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
}

/// One line for an API error: the named errors by name, bus problems in words.
pub fn describe(e: &ApiError) -> String {
    match e {
        ApiError::Busy(m) => format!("busy: {}", m.trim_start_matches("busy: ")),
        ApiError::NotNow(m) => format!("not now: {m}"),
        ApiError::NotAuthorized(m) => format!("not authorized: {m}"),
        ApiError::LimitExceeded(m) => format!("limit exceeded: {m}"),
        ApiError::InvalidArgument(m) => format!("invalid argument: {m}"),
        ApiError::InvalidArtifact(m) => format!("invalid artifact: {m}"),
        ApiError::NoServer(m) => format!("no update server: {m}"),
        ApiError::Failed(m) => format!("failed: {m}"),
        ApiError::ZBus(zbus::Error::MethodError(name, msg, _)) => match name.as_str() {
            "org.freedesktop.DBus.Error.ServiceUnknown" | "org.freedesktop.DBus.Error.NameHasNoOwner" => {
                "otterd is not running (no owner of io.otter.Updater1 on this bus)".into()
            }
            "org.freedesktop.DBus.Error.AccessDenied" => {
                format!("access denied by the bus policy: {}", msg.as_deref().unwrap_or(""))
            }
            _ => format!("{name}: {}", msg.as_deref().unwrap_or("")),
        },
        ApiError::ZBus(e) => e.to_string(),
    }
}

fn api(e: ApiError) -> anyhow::Error {
    anyhow!(describe(&e))
}

fn prop(e: zbus::Error) -> anyhow::Error {
    api(ApiError::ZBus(e))
}

async fn connect(cli: &Cli) -> Result<zbus::Connection> {
    let (builder, what) = if let Some(a) = &cli.address {
        (zbus::connection::Builder::address(a.as_str()), format!("the bus at {a}"))
    } else if cli.session {
        (zbus::connection::Builder::session(), "the session bus".to_owned())
    } else {
        (zbus::connection::Builder::system(), "the system bus".to_owned())
    };
    let conn = async { builder?.build().await }.await.map_err(|e| anyhow!("cannot connect to {what}: {e}"))?;
    Ok(conn)
}

/// Runs the command; the exit code says how it went.
pub async fn run(cli: Cli) -> Result<ExitCode> {
    let conn = connect(&cli).await?;
    let proxy = Updater1Proxy::new(&conn).await.map_err(prop)?;
    let json = cli.json;
    match cli.command {
        Cmd::Status => status(&proxy, json).await,
        Cmd::Install { source, no_wait, header, tls_ca, tls_cert } => {
            let mut options: HashMap<&str, Value<'_>> = HashMap::new();
            if !header.is_empty() {
                options.insert("http-headers", Value::from(header));
            }
            if let Some(ca) = tls_ca {
                options.insert("tls-ca", Value::from(ca));
            }
            if let Some(cert) = tls_cert {
                options.insert("tls-cert", Value::from(cert));
            }
            install(&proxy, &source, options, no_wait, json).await
        }
        Cmd::Cancel => simple(proxy.cancel().await, json, "cancel requested"),
        Cmd::Check => simple(proxy.check_for_update().await, json, "update check requested"),
        Cmd::Confirmations => {
            let list = proxy.get_confirmations().await.map_err(api)?;
            if json {
                let v: Vec<_> = list.iter().map(|(a, v)| json!({ "action": a, "version": v })).collect();
                outln!("{}", serde_json::Value::from(v))?;
            } else if list.is_empty() {
                outln!("no update waits for consent")?;
            } else {
                for (action, version) in &list {
                    outln!("action {action}: version {version} waits for consent")?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Confirm { action, deny, details } => {
            let what = if deny { "declined" } else { "confirmed" };
            simple(proxy.confirm(&action, !deny, &details).await, json, what)
        }
        Cmd::Reboot => simple(proxy.reboot().await, json, "rebooting into the new slot"),
        Cmd::Mark { state, slot } => {
            let slot = if slot.len() == 1 { slot.to_uppercase() } else { slot };
            let marked = proxy.mark(&state, &slot).await.map_err(api)?;
            if json {
                outln!("{}", json!({ "slot": marked, "state": state }))?;
            } else {
                outln!("slot {marked} marked {state}")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Slots => slots(&proxy, json).await,
        Cmd::History => history(&proxy, json).await,
        Cmd::Inhibit { why, command } => inhibit(&proxy, &why, &command).await,
    }
}

fn simple(r: Result<(), ApiError>, json: bool, done: &str) -> Result<ExitCode> {
    r.map_err(api)?;
    if json {
        outln!("{}", json!({ "ok": true }))?;
    } else {
        outln!("{done}")?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(p: &Updater1Proxy<'_>, json: bool) -> Result<ExitCode> {
    let operation = p.operation().await.map_err(prop)?;
    let progress = p.progress().await.map_err(prop)?;
    let booted = p.booted_slot().await.map_err(prop)?;
    let primary = p.primary_slot().await.map_err(prop)?;
    let version = p.version().await.map_err(prop)?;
    let compatible = p.compatible().await.map_err(prop)?;
    let pending = p.pending_reboot().await.map_err(prop)?;
    let last_error = p.last_error().await.map_err(prop)?;
    let inhibitors = p.inhibitors().await.map_err(prop)?;
    if json {
        let v = json!({
            "operation": operation,
            "progress": progress,
            "booted_slot": booted,
            "primary_slot": primary,
            "version": version,
            "compatible": compatible,
            "pending_reboot": pending,
            "last_error": last_error,
            "inhibitors": inhibitors,
        });
        outln!("{v}")?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!("operation:    {operation}")?;
    if operation == "installing" {
        outln!(
            "progress:     {}% ({} of {}, {})",
            progress.percent,
            bytes(progress.bytes_done),
            bytes(progress.bytes_total),
            progress.message
        )?;
    }
    outln!("booted slot:  {}", or_unknown(&booted))?;
    outln!("next boot:    {}", or_unknown(&primary))?;
    if pending {
        outln!("reboot:       pending")?;
    }
    outln!("compatible:   {compatible}")?;
    outln!("otterd:       {version}")?;
    if !last_error.code.is_empty() {
        outln!("last error:   {}: {}", last_error.code, last_error.message)?;
    }
    for i in &inhibitors {
        outln!("inhibited by: {} ({})", i.who, i.why)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() { "unknown" } else { s }
}

async fn slots(p: &Updater1Proxy<'_>, json: bool) -> Result<ExitCode> {
    let slots: Vec<SlotInfo> =
        p.get_slots().await.map_err(api)?.into_iter().map(|(name, d)| SlotInfo::from_dbus(name, &d)).collect();
    if json {
        outln!("{}", serde_json::to_string(&slots)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    for s in &slots {
        let mut notes = Vec::new();
        if s.booted {
            notes.push("booted".to_owned());
        }
        if s.primary {
            notes.push("next boot".to_owned());
        }
        if let Some(a) = s.attempts_left {
            notes.push(format!("{a} attempts left"));
        }
        outln!("{}  {:<7} {}  {}", s.name, s.state, s.device, notes.join(", "))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn history(p: &Updater1Proxy<'_>, json: bool) -> Result<ExitCode> {
    let jobs: Vec<HistoryEntry> = p.get_history().await.map_err(api)?.iter().map(HistoryEntry::from_dbus).collect();
    if json {
        outln!("{}", serde_json::to_string(&jobs)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if jobs.is_empty() {
        outln!("no finished jobs")?;
    }
    for j in &jobs {
        let version = if j.version.is_empty() { "?" } else { &j.version };
        let detail = if j.message.is_empty() { String::new() } else { format!(": {}", j.message) };
        outln!("job {:>3}  {} -> {}  {:<11} {version}  {}{detail}", j.id, j.from, j.target, j.result, j.source)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What `install` hands to the daemon: a URL as it is, or a file opened here and passed as a descriptor (otterd
/// runs with its own view of the filesystem: private /tmp, no /home), named by its absolute path.
enum Artifact {
    Url(String),
    File(std::fs::File, String),
}

fn open_artifact(source: &str) -> Result<Artifact> {
    if source.contains("://") {
        return Ok(Artifact::Url(source.to_owned()));
    }
    let path = Path::new(source);
    let abs = std::path::absolute(path).with_context(|| format!("{source}: cannot make the path absolute"))?;
    if abs.is_dir() {
        return Err(anyhow!("{source}: is a directory"));
    }
    let file = std::fs::File::open(&abs).with_context(|| source.to_owned())?;
    Ok(Artifact::File(file, abs.display().to_string()))
}

async fn install(
    p: &Updater1Proxy<'_>,
    source: &str,
    options: HashMap<&str, Value<'_>>,
    no_wait: bool,
    json: bool,
) -> Result<ExitCode> {
    let artifact = open_artifact(source)?;
    if matches!(artifact, Artifact::File(..)) && !options.is_empty() {
        return Err(anyhow!("--header, --tls-ca and --tls-cert apply to http(s) URLs only"));
    }
    // Subscribe before the call: a short job could otherwise end before we listen.
    let mut completed = p.receive_completed().await.map_err(prop)?;
    let mut progress = p.receive_progress_changed().await;
    let mut owner = p.inner().receive_owner_changed().await.map_err(prop)?;
    let job = match &artifact {
        Artifact::Url(url) => p.install(url, options).await,
        Artifact::File(file, name) => {
            let options = HashMap::from([("name", Value::from(name.as_str()))]);
            p.install_fd(zbus::zvariant::Fd::from(file), options).await
        }
    }
    .map_err(api)?;
    let id = otter_api::job_id(&job.as_ref()).unwrap_or(0);
    if no_wait {
        if json {
            outln!("{}", json!({ "job": id, "path": job.as_str() }))?;
        } else {
            outln!("job {id} started")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut bar = Bar::new(!json && std::io::stderr().is_terminal(), !json);
    loop {
        tokio::select! {
            signal = completed.next() => {
                let Some(signal) = signal else { return Err(anyhow!("lost the connection to otterd")) };
                let args = signal.args().map_err(prop)?;
                if args.job.as_str() != job.as_str() {
                    continue;
                }
                bar.finish();
                let (result, code, message) = (args.result.to_owned(), args.code.to_owned(), args.message.to_owned());
                if json {
                    outln!("{}", json!({ "job": id, "result": result, "code": code, "message": message }))?;
                }
                return Ok(match result.as_str() {
                    "installed" | "committed" => {
                        if !json {
                            outln!("job {id} {result}: {message}")?;
                        }
                        ExitCode::SUCCESS
                    }
                    "cancelled" => {
                        if !json {
                            errln!("otterctl: job {id} cancelled");
                        }
                        ExitCode::from(EXIT_CANCELLED)
                    }
                    _ => {
                        if !json {
                            errln!("otterctl: job {id} {result}: {code}: {message}");
                        }
                        ExitCode::from(EXIT_FAILED)
                    }
                });
            }
            change = owner.next() => {
                if change.is_none_or(|o| o.is_none()) {
                    bar.finish();
                    return Err(anyhow!("otterd left the bus before job {id} finished"));
                }
            }
            change = progress.next() => {
                let Some(change) = change else { return Err(anyhow!("lost the connection to otterd")) };
                if let Ok(pr) = change.get().await {
                    bar.update(&pr)?;
                }
            }
        }
    }
}

/// The progress display: a redrawn bar on a terminal, one line per percent otherwise.
struct Bar {
    tty: bool,
    enabled: bool,
    /// When writing started and the bytes done then, for the rate.
    origin: Option<(Instant, u64)>,
    last_percent: Option<u32>,
    last_message: String,
    drawn: bool,
}

impl Bar {
    fn new(tty: bool, enabled: bool) -> Self {
        Self { tty, enabled, origin: None, last_percent: None, last_message: String::new(), drawn: false }
    }

    fn update(&mut self, p: &otter_api::Progress) -> Result<()> {
        if !self.enabled || p.message.is_empty() {
            return Ok(());
        }
        if p.bytes_total > 0 && self.origin.is_none() {
            self.origin = Some((Instant::now(), p.bytes_done));
        }
        let (rate, eta) = match self.origin {
            Some((t0, b0)) if t0.elapsed() > Duration::from_millis(500) && p.bytes_done > b0 => {
                let rate = (p.bytes_done - b0) as f64 / t0.elapsed().as_secs_f64();
                let eta = p.bytes_total.saturating_sub(p.bytes_done) as f64 / rate;
                (Some(rate), Some(eta))
            }
            _ => (None, None),
        };
        let rate_s = rate.map_or("-".to_owned(), |r| format!("{}/s", bytes(r as u64)));
        let eta_s = eta.map_or("-".to_owned(), |e| format!("{}:{:02}", e as u64 / 60, e as u64 % 60));
        if self.tty {
            let width = 30usize;
            let filled = (p.percent.min(100) as usize * width) / 100;
            err!(
                "\r[{}{}] {:>3}%  {} / {}  {}  ETA {}  {:<10}",
                "#".repeat(filled),
                "-".repeat(width - filled),
                p.percent,
                bytes(p.bytes_done),
                bytes(p.bytes_total),
                rate_s,
                eta_s,
                p.message
            );
            let _ = std::io::stderr().flush();
            self.drawn = true;
        } else if self.last_percent != Some(p.percent) || self.last_message != p.message {
            outln!(
                "{:>3}% {} of {} ({}, {rate_s}, ETA {eta_s})",
                p.percent,
                bytes(p.bytes_done),
                bytes(p.bytes_total),
                p.message
            )?;
        }
        self.last_percent = Some(p.percent);
        self.last_message.clone_from(&p.message);
        Ok(())
    }

    fn finish(&mut self) {
        if self.drawn {
            errln!();
            self.drawn = false;
        }
    }
}

/// Bytes for humans (binary units).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

async fn inhibit(p: &Updater1Proxy<'_>, why: &str, command: &[String]) -> Result<ExitCode> {
    let fd = p.inhibit(why).await.map_err(api)?;
    let status = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .status()
        .await
        .with_context(|| format!("cannot run {:?}", command[0]))?;
    // Released here: the daemon sees the pipe close.
    drop(fd);
    Ok(match status.code() {
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(EXIT_FAILED)),
        None => ExitCode::from(EXIT_FAILED),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
    }

    #[test]
    fn errors_are_one_line_and_named() {
        assert_eq!(describe(&ApiError::Busy("busy: job 3 is Installing".into())), "busy: job 3 is Installing");
        assert!(describe(&ApiError::NotAuthorized("x".into())).starts_with("not authorized"));
    }
}
