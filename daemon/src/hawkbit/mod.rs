//! The Eclipse hawkBit DDI client: polls the server on its own thread and turns its answers into runtime commands,
//! and the runtime's progress and finished jobs into DDI feedback.
//!
//! - [`model`]: the DDI JSON documents, typed; [`model::parse_sleep`].
//! - [`client`]: one blocking method per DDI resource, with TargetToken / GatewayToken / client-certificate auth.
//! - [`reported`]: the durable "already reported" log.
//! - [`inventory`]: the `configData` attributes.
//! - `worker`: the poll loop, following the runtime's jobs, progress and final feedback.
//! - `deploy`: deployments offered by the poll (install, download only, fail) and server cancel requests.
//! - `consent`: `confirmationBase` and the [`ConfirmationBroker`]; `trigger`: the [`Trigger`] that wakes the loop.
//! - [`Poller`]: the thread. [`Trigger`] wakes it at once (D-Bus `CheckForUpdate()`); [`ConfirmationBroker`] lets
//!   local applications answer consent requests when `server.auto_confirm` is off.
//!
//! Feedback per action, in order: `proceeding` (accepted, then throttled progress), `downloaded` (the slot holds
//! the verified image), and after the reboot and the health check `closed`/`success` — or `closed`/`failure` with
//! the reason whenever it fails. See `docs/hawkbit.md`.

pub mod client;
mod consent;
mod deploy;
pub mod inventory;
pub mod model;
pub mod reported;
mod trigger;
mod worker;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::SystemTime;

use client::{DdiClient, DdiError};
pub use consent::{ConfirmationBroker, ConfirmationRequest, UnknownConfirmation};
use reported::Reported;
pub use trigger::Trigger;
use worker::Worker;

use crate::config::Settings;
use crate::runtime::Handle;

/// The software-module part whose `.otter` artifact is ours.
pub const PART: &str = "os";

/// The DDI poller thread. Start it between [`crate::runtime::Runtime::start`] and `run` so it also hears about
/// jobs the start-up reconciliation ended (the result of a trial boot).
pub struct Poller {
    trigger: Trigger,
    broker: ConfirmationBroker,
    stopped: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Poller {
    /// Builds the client and starts polling at once.
    pub fn start(settings: &Settings, handle: Handle) -> Result<Self, DdiError> {
        let server = settings.server.clone().ok_or_else(|| DdiError::Setup("no [server] configured".into()))?;
        let client = Arc::new(DdiClient::new(&server)?);
        let trigger = Trigger::default();
        let broker = ConfirmationBroker::new(trigger.clone());
        let stopped = Arc::new(AtomicBool::new(false));
        let mut worker = Worker {
            finished: handle.subscribe(),
            watch: handle.watch(),
            status: handle.status(),
            handle,
            client,
            reported: Reported::load(&settings.state_dir),
            settings: settings.clone(),
            server,
            broker: broker.clone(),
            sleep: None,
            failures: 0,
            last_progress: None,
            forced: HashSet::new(),
            interrupted_told: HashSet::new(),
            pending_final: Vec::new(),
            inventory_sent: None,
            rng: seed(),
            waiting: HashMap::new(),
        };
        let thread = {
            let (trigger, stopped) = (trigger.clone(), stopped.clone());
            std::thread::Builder::new()
                .name("hawkbit".into())
                .spawn(move || {
                    worker.run(&trigger);
                    stopped.store(true, Ordering::SeqCst);
                })
                .map_err(|e| DdiError::Setup(format!("starting the poller thread: {e}")))?
        };
        Ok(Self { trigger, broker, stopped, thread: Some(thread) })
    }

    /// Wakes the poller (D-Bus `CheckForUpdate()`).
    pub fn trigger(&self) -> Trigger {
        self.trigger.clone()
    }

    /// Consent requests, for the D-Bus layer.
    pub fn broker(&self) -> ConfirmationBroker {
        self.broker.clone()
    }

    /// Whether the thread ended (it only ends on [`Poller::stop`]).
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Stops the thread after its current request and waits for it.
    pub fn stop(mut self) {
        self.trigger.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.trigger.stop();
    }
}

fn seed() -> u64 {
    let t = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    (t ^ (u64::from(std::process::id()) << 32)) | 1
}
