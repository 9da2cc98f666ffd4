//! `otterd`: the update daemon's entry point. Parses arguments, sets up logging, and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use otterd::runtime::{Runtime, SystemPlatform};

const USAGE: &str = "usage: otterd [--root DIR] [--session | --bus-address ADDR | --no-dbus] \
                     [run | --check-config | health-check]";

fn init_logging() {
    use tracing_subscriber::prelude::*;
    // `OTTER_LOG`: a level (`debug`) or per-target directives (`otterd::hawkbit=trace,info`), without regexes.
    let filter = std::env::var("OTTER_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing_subscriber::filter::Targets>().ok())
        .unwrap_or_else(|| tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO));
    // Under systemd stderr is connected to the journal (JOURNAL_STREAM); log natively there, with levels.
    if std::env::var_os("JOURNAL_STREAM").is_some()
        && let Ok(journald) = tracing_journald::layer()
    {
        tracing_subscriber::registry().with(filter).with(journald).init();
        return;
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false))
        .init();
}

fn main() -> ExitCode {
    let mut root = PathBuf::from("/");
    let mut command = "run".to_owned();
    // The D-Bus API is served on the system bus; the session bus or a private bus for demos and tests.
    let mut bus = Some(otterd::dbus::Bus::System);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--root" => match args.next() {
                Some(r) => root = PathBuf::from(r),
                None => {
                    eprintln!("{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "--session" => bus = Some(otterd::dbus::Bus::Session),
            "--no-dbus" => bus = None,
            "--bus-address" => match args.next() {
                Some(addr) => bus = Some(otterd::dbus::Bus::Address(addr)),
                None => {
                    eprintln!("{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "run" | "--check-config" | "health-check" => command = a,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => {
                eprintln!("otterd: unknown argument {a:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    init_logging();
    // Before any thread starts.
    otterd::memory::configure();
    match run(&root, &command, bus) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("otterd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(root: &std::path::Path, command: &str, bus: Option<otterd::dbus::Bus>) -> Result<ExitCode> {
    let settings = otterd::config::load(root).context("invalid configuration")?;
    // Before anything talks to the server: a token others can read is refused, plain http warned about.
    let warnings = otterd::secrets::check(&settings).context("invalid configuration")?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    match command {
        "--check-config" => {
            let files: Vec<String> = settings.files.iter().map(|p| p.display().to_string()).collect();
            for w in &warnings {
                eprintln!("otterd: warning: {w}");
            }
            println!("configuration ok ({})", files.join(", "));
            Ok(ExitCode::SUCCESS)
        }
        "health-check" => {
            let deadline = std::time::Instant::now() + settings.commit_deadline;
            let cancel = std::sync::atomic::AtomicBool::new(false);
            match otterd::health::run_all(&settings.health.boot_checks(), deadline, &cancel) {
                Ok(()) => {
                    println!("healthy");
                    Ok(ExitCode::SUCCESS)
                }
                Err(f) => {
                    eprintln!("otterd: unhealthy: {f}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        _ => {
            let signals = block_termination_signals()?;
            // Listening from here on: a stop request while start-up waits (e.g. for the bootloader env lock) is
            // answered too.
            let started = std::sync::Arc::new(std::sync::OnceLock::new());
            stop_on_signal(signals, started.clone());
            let mut dbus_options = bus.map(|b| otterd::dbus::Options::new(b, &settings));
            let server_settings = settings.clone();
            let (runtime, handle) = Runtime::start(settings, Box::new(SystemPlatform))?;
            let _ = started.set(handle.clone());
            // The hawkBit poller subscribes before `run`, so it hears the result of a trial boot.
            let _poller = match &server_settings.server {
                Some(_) => {
                    let poller = otterd::hawkbit::Poller::start(&server_settings, handle.clone())
                        .context("cannot start the hawkBit client")?;
                    if let Some(o) = dbus_options.as_mut() {
                        o.check_for_update = Some(poller.trigger().callback());
                        o.consent = Some(poller.broker());
                    }
                    Some(poller)
                }
                None => None,
            };
            // Own the bus name before `run` sends READY=1: a unit ordered after otterd finds the API.
            let _dbus = match dbus_options {
                Some(o) => Some(otterd::dbus::Service::start(handle.clone(), o).context("cannot serve the D-Bus API")?),
                None => None,
            };
            runtime.run();
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Blocks SIGTERM and SIGINT in this thread (and so in every thread started after it); they are taken with
/// `sigwait` by [`stop_on_signal`] instead, so a stop request becomes an orderly `Stop` of the loop (with
/// `STOPPING=1`) rather than an abrupt exit. Child processes get a clean signal mask from `std::process`.
fn block_termination_signals() -> Result<nix::sys::signal::SigSet> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).context("blocking SIGTERM/SIGINT")?;
    Ok(set)
}

/// How long an orderly stop may take before otterd exits anyway: less than the unit's `TimeoutStopSec=30s`, so
/// the daemon always stops on its own, whatever the loop is waiting for. An exit at any point is safe (every
/// write is power-cut safe), only less tidy. 20 seconds.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(20);

/// Exit status when the loop did not stop within [`STOP_GRACE`] or a second signal came.
const EXIT_FORCED_STOP: i32 = 3;

/// Turns the first SIGTERM/SIGINT into an orderly `Stop` of the loop once `started` holds its handle (before that,
/// nothing has started that needs stopping: exits at once); if the loop has not ended [`STOP_GRACE`] later, or a
/// second signal comes, exits at once.
fn stop_on_signal(
    signals: nix::sys::signal::SigSet,
    started: std::sync::Arc<std::sync::OnceLock<otterd::runtime::Handle>>,
) {
    std::thread::spawn(move || {
        let Ok(sig) = signals.wait() else { return };
        let Some(handle) = started.get() else {
            tracing::info!("{sig} during start-up: exiting");
            std::process::exit(0);
        };
        tracing::info!("{sig}: stopping");
        handle.send(otterd::runtime::Command::Stop);
        std::thread::spawn(|| {
            std::thread::sleep(STOP_GRACE);
            tracing::error!("the engine did not stop within {STOP_GRACE:?}; exiting now");
            std::process::exit(EXIT_FORCED_STOP);
        });
        if let Ok(sig) = signals.wait() {
            tracing::warn!("{sig} again: exiting now");
            std::process::exit(EXIT_FORCED_STOP);
        }
    });
}
