//! What the daemon shows (D-Bus properties, `STATUS=`), and delivering finished jobs to subscribers.

use otter_bootloader::{Slot, SlotState};
use otter_installer::Progress;

use super::Runtime;
use crate::engine::{JobPhase, JobRecord};

/// What the daemon is doing, for status displays (D-Bus properties, `STATUS=`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// The booted slot.
    pub booted: Option<Slot>,
    /// The bootloader's next slot.
    pub primary: Option<Slot>,
    /// `idle`, `installing`, `awaiting-reboot`, `rebooting`, `assessing`, `rolling-back`, `error`.
    pub operation: String,
    /// Latest install progress.
    pub progress: Option<Progress>,
    /// The job in progress.
    pub job: Option<crate::engine::Job>,
    /// The last finished job.
    pub last: Option<JobRecord>,
    /// A condition that keeps the daemon from updating (corrupt env, unknown booted slot...).
    pub error: Option<String>,
    /// What the bootloader says about each slot (empty if its environment is unusable).
    pub slots: Vec<(Slot, SlotState)>,
    /// Local inhibitors held, as (who, why).
    pub inhibitors: Vec<(String, String)>,
    /// The job's last reboot attempt failed with this (it is retried with backoff).
    pub reboot_error: Option<String>,
}

impl Status {
    /// A one-line summary for `STATUS=`.
    pub fn line(&self) -> String {
        let slot = self.booted.map_or("?".to_owned(), |s| s.to_string());
        if let Some(e) = &self.error {
            return format!("booted {slot}; cannot update: {e}");
        }
        match (&self.job, &self.progress) {
            (Some(j), Some(p)) if j.phase == JobPhase::Installing => {
                format!("installing job {} into slot {}: {}%", j.id, j.target, p.percent())
            }
            (Some(j), _) => match &self.reboot_error {
                Some(e) => format!("booted {slot}; job {} {}; reboot failed: {e}", j.id, self.operation),
                None => format!("booted {slot}; job {} {}", j.id, self.operation),
            },
            (None, _) => match &self.last {
                Some(r) => format!("booted {slot}; idle; last job {} {}", r.job.id, r.outcome.word()),
                None => format!("booted {slot}; idle"),
            },
        }
    }
}

impl Runtime {
    pub(super) fn finished_job(&mut self, record: JobRecord) {
        tracing::info!("job {} finished: {:?}", record.job.id, record.outcome);
        if self.running {
            self.deliver(record);
        } else {
            self.early_records.push(record);
        }
    }

    pub(super) fn deliver(&self, record: JobRecord) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.finished.retain(|s| s.send(record.clone()).is_ok());
    }

    pub(super) fn publish(&mut self) {
        let status = {
            let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
            s.booted = self.engine.booted();
            s.primary = self.boot.as_ref().and_then(|b| b.primary());
            s.slots = self.boot.as_ref().map(|b| Slot::ALL.map(|x| (x, b.slot_state(x))).to_vec()).unwrap_or_default();
            s.job = self.engine.job().cloned();
            s.reboot_error = self.engine.reboot_failure().map(|f| f.message.clone());
            s.error = self.unusable.clone().or_else(|| self.unsaved.as_ref().map(|e| format!("state not saved: {e}")));
            s.last = self.engine.persisted.history.back().cloned();
            s.operation = match self.engine.job().map(|j| j.phase) {
                None => "idle",
                Some(JobPhase::Installing | JobPhase::Installed) => "installing",
                Some(JobPhase::AwaitingReboot) => "awaiting-reboot",
                Some(JobPhase::Rebooting) => "rebooting",
                Some(JobPhase::Assessing) => "assessing",
                Some(JobPhase::RollingBack) => "rolling-back",
            }
            .to_owned();
            if s.job.is_none() {
                s.progress = None;
            }
            s.clone()
        };
        let line = status.line();
        if status != self.published {
            let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
            subs.status.retain(|s| s.send(status.clone()).is_ok());
            self.published = status;
        }
        self.notifier.status(&line);
    }
}
