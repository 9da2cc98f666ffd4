//! Consent: the server's `confirmationBase` requests, answered by local applications through the
//! [`ConfirmationBroker`] (or automatically with `server.auto_confirm`).

use std::collections::BTreeMap;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::PART;
use super::client::DdiError;
use super::model::{Confirmation, ConfirmationFeedback};
use super::trigger::Trigger;
use super::worker::Worker;

/// An update waiting for consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfirmationRequest {
    /// hawkBit action id.
    pub action_id: String,
    /// Version of our software module.
    pub version: String,
    /// Artifact file names.
    pub artifacts: Vec<String>,
    /// When the server asked.
    pub requested_at: SystemTime,
}

/// Why [`ConfirmationBroker::answer`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no update waits for consent under action id {0:?}")]
pub struct UnknownConfirmation(pub String);

#[derive(Default)]
struct BrokerState {
    pending: BTreeMap<String, ConfirmationRequest>,
    answers: BTreeMap<String, (bool, Option<String>)>,
    subscribers: Vec<Sender<ConfirmationRequest>>,
}

/// Consent requests from the server for local applications (the D-Bus layer), when `server.auto_confirm` is off.
///
/// The poller calls [`ConfirmationBroker::offer`] for each `confirmationBase` it sees; the D-Bus service lists
/// [`ConfirmationBroker::pending`] (or follows [`ConfirmationBroker::subscribe`] to emit a signal) and calls
/// [`ConfirmationBroker::answer`]; the poller then sends the decision at once.
#[derive(Clone, Default)]
pub struct ConfirmationBroker {
    state: Arc<Mutex<BrokerState>>,
    pub(super) trigger: Trigger,
}

impl ConfirmationBroker {
    /// A broker whose answers wake the poller through `trigger`.
    pub(super) fn new(trigger: Trigger) -> Self {
        Self { state: Arc::default(), trigger }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BrokerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Updates waiting for an answer, oldest action first.
    pub fn pending(&self) -> Vec<ConfirmationRequest> {
        self.lock().pending.values().cloned().collect()
    }

    /// Receives each new request once (e.g. to emit a D-Bus signal).
    pub fn subscribe(&self) -> Receiver<ConfirmationRequest> {
        let (tx, rx) = mpsc::channel();
        self.lock().subscribers.push(tx);
        rx
    }

    /// Confirms or denies the update of `action_id`; `details` goes to the server. Sent at once.
    pub fn answer(&self, action_id: &str, confirmed: bool, details: Option<String>) -> Result<(), UnknownConfirmation> {
        let mut s = self.lock();
        if s.pending.remove(action_id).is_none() {
            return Err(UnknownConfirmation(action_id.to_owned()));
        }
        s.answers.insert(action_id.to_owned(), (confirmed, details));
        drop(s);
        self.trigger.fire();
        Ok(())
    }

    /// Registers a request (idempotent); used by the poller.
    pub fn offer(&self, request: ConfirmationRequest) {
        let mut s = self.lock();
        if s.pending.contains_key(&request.action_id) || s.answers.contains_key(&request.action_id) {
            return;
        }
        s.subscribers.retain(|tx| tx.send(request.clone()).is_ok());
        s.pending.insert(request.action_id.clone(), request);
    }

    pub(super) fn take_answers(&self) -> Vec<(String, bool, Option<String>)> {
        std::mem::take(&mut self.lock().answers).into_iter().map(|(k, (c, d))| (k, c, d)).collect()
    }
}

impl Worker {
    pub(super) fn confirmation(&mut self, href: &str) -> Result<(), DdiError> {
        let d = self.client.deployment(href)?;
        if self.server.auto_confirm {
            let f = ConfirmationFeedback {
                confirmation: Confirmation::Confirmed,
                code: None,
                details: vec!["confirmed automatically (server.auto_confirm)".into()],
            };
            return self.client.confirmation_feedback(&d.id, &f);
        }
        let (version, artifacts) = match d.deployment.artifact(PART) {
            Some((c, a)) => (c.version.clone(), vec![a.filename.clone()]),
            None => (String::new(), Vec::new()),
        };
        self.broker.offer(ConfirmationRequest {
            action_id: d.id.clone(),
            version,
            artifacts,
            requested_at: SystemTime::now(),
        });
        Ok(())
    }

    /// Sends the consent answers given locally; returns whether there were any.
    pub(super) fn send_answers(&mut self) -> bool {
        let answers = self.broker.take_answers();
        let any = !answers.is_empty();
        for (id, confirmed, details) in answers {
            let f = ConfirmationFeedback {
                confirmation: if confirmed { Confirmation::Confirmed } else { Confirmation::Denied },
                code: None,
                details: details.into_iter().collect(),
            };
            if let Err(e) = self.client.confirmation_feedback(&id, &f) {
                tracing::warn!("hawkbit: sending the consent answer for action {id}: {e}");
            }
        }
        any
    }
}
