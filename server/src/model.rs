//! The fleet's vocabulary, shared by the device API, the rollout engine and the operator API: action states and
//! kinds, rollout specifications, target filters and maintenance windows. Pure types and pure checks; stored as
//! text in the database via `as_str`/`parse`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How an action is to be carried out (DDI `deployment.download`/`update`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ActionKind {
    /// Download and install now (DDI `forced`/`forced`).
    Forced,
    /// Download and install when the device chooses (DDI `attempt`/`attempt`).
    #[default]
    Soft,
    /// Download only; the device does not install (DDI `update: skip`).
    DownloadOnly,
}

impl ActionKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Forced => "forced",
            ActionKind::Soft => "soft",
            ActionKind::DownloadOnly => "download-only",
        }
    }
    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "forced" => ActionKind::Forced,
            "soft" => ActionKind::Soft,
            "download-only" => ActionKind::DownloadOnly,
            _ => return None,
        })
    }
}

/// Where an action stands. `active` in the database is 1 exactly for the non-terminal states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActionState {
    /// Waiting for the device's consent (DDI `confirmationBase`).
    WaitConfirmation,
    /// Offered to the device (DDI `deploymentBase`), no progress reported yet or in progress.
    Running,
    /// The device reports the artifact downloaded (and, for download-only, that is the end of it).
    Downloaded,
    /// The operator cancelled; the device is offered `cancelAction` and has not answered yet.
    Canceling,
    /// Terminal: cancelled (acknowledged by the device, or before it ever fetched the action).
    Canceled,
    /// Terminal: the device reports success (`closed`/`success`).
    Finished,
    /// Terminal: the device reports failure (`closed`/`failure`), or refused the action.
    Error,
}

impl ActionState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionState::WaitConfirmation => "wait-confirmation",
            ActionState::Running => "running",
            ActionState::Downloaded => "downloaded",
            ActionState::Canceling => "canceling",
            ActionState::Canceled => "canceled",
            ActionState::Finished => "finished",
            ActionState::Error => "error",
        }
    }
    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "wait-confirmation" => ActionState::WaitConfirmation,
            "running" => ActionState::Running,
            "downloaded" => ActionState::Downloaded,
            "canceling" => ActionState::Canceling,
            "canceled" => ActionState::Canceled,
            "finished" => ActionState::Finished,
            "error" => ActionState::Error,
            _ => return None,
        })
    }
    /// Whether the action is over.
    pub fn is_terminal(self) -> bool {
        matches!(self, ActionState::Canceled | ActionState::Finished | ActionState::Error)
    }
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutState {
    /// Created; waiting for its start time.
    Scheduled,
    /// A group is running.
    Running,
    /// The next group waits for an approver.
    WaitingApproval,
    /// Stopped by an operator, or by itself (a group crossed its error threshold); `reason` says which.
    Paused,
    /// Every group is done.
    Finished,
    /// Cancelled by an operator; open actions were cancelled.
    Cancelled,
}

impl RolloutState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Scheduled => "scheduled",
            RolloutState::Running => "running",
            RolloutState::WaitingApproval => "waiting-approval",
            RolloutState::Paused => "paused",
            RolloutState::Finished => "finished",
            RolloutState::Cancelled => "cancelled",
        }
    }
    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "scheduled" => RolloutState::Scheduled,
            "running" => RolloutState::Running,
            "waiting-approval" => RolloutState::WaitingApproval,
            "paused" => RolloutState::Paused,
            "finished" => RolloutState::Finished,
            "cancelled" => RolloutState::Cancelled,
            _ => return None,
        })
    }
    /// Whether the rollout is over.
    pub fn is_terminal(self) -> bool {
        matches!(self, RolloutState::Finished | RolloutState::Cancelled)
    }
}

/// Standard or fast release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Speed {
    /// Devices learn of the rollout at their next regular poll.
    #[default]
    Standard,
    /// While the rollout runs, its devices are told to poll every few seconds (`--fast-poll`).
    Fast,
}

impl Speed {
    /// The name, as stored in `rollouts.speed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Speed::Standard => "standard",
            Speed::Fast => "fast",
        }
    }
}

/// A daily maintenance window in UTC: installs may start only inside it (DDI `maintenanceWindow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Start, minutes after midnight UTC (0..1440).
    pub start_minute: u32,
    /// Length in minutes (1..=1440).
    pub duration_minutes: u32,
}

impl Window {
    /// Whether the window is open at `now_ms`.
    pub fn is_open(&self, now_ms: i64) -> bool {
        let minute_of_day = (now_ms.div_euclid(60_000)).rem_euclid(1440) as u32;
        let since_start = (minute_of_day + 1440 - self.start_minute) % 1440;
        since_start < self.duration_minutes
    }
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), String> {
        if self.start_minute >= 1440 {
            return Err(format!("window.start_minute {} must be below 1440", self.start_minute));
        }
        if self.duration_minutes == 0 || self.duration_minutes > 1440 {
            return Err(format!("window.duration_minutes {} must be 1..=1440", self.duration_minutes));
        }
        Ok(())
    }
}

/// Which devices a rollout targets. Every given condition must hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Filter {
    /// The device's compatible string (from its inventory, `compatible` attribute, or set at registration).
    pub compatible: Option<String>,
    /// Tags the device must all carry.
    pub tags: Vec<String>,
    /// Inventory attributes that must have exactly these values.
    pub attributes: BTreeMap<String, String>,
    /// The version the device must currently report.
    pub version: Option<String>,
}

/// One group of a rollout, started in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// A name shown to operators ("canary").
    pub name: String,
    /// Share of the matching devices, in percent (1..=100); the last group takes whatever is left.
    #[serde(default)]
    pub percent: Option<u32>,
    /// Explicit controller ids (instead of a percentage).
    #[serde(default)]
    pub devices: Option<Vec<String>>,
    /// Percentage of the group's devices that must succeed before the next group starts (default 100).
    #[serde(default = "default_success")]
    pub success_threshold: u32,
    /// Percentage of the group's devices that may fail; above it the rollout pauses itself (default 0: any failure).
    #[serde(default)]
    pub error_threshold: u32,
    /// Whether an approver must approve before this group starts.
    #[serde(default)]
    pub approval: bool,
}

fn default_success() -> u32 {
    100
}

/// What an operator asks for when creating a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// The groups, in order (at least one).
    pub groups: Vec<GroupSpec>,
    /// Forced, soft or download-only.
    #[serde(default)]
    pub kind: ActionKind,
    /// Standard or fast release.
    #[serde(default)]
    pub speed: Speed,
    /// Installs only inside this window (devices download outside it).
    #[serde(default)]
    pub window: Option<Window>,
    /// Don't start before this time (milliseconds since the epoch).
    #[serde(default)]
    pub start_at_ms: Option<i64>,
    /// Ask each device's consent first (DDI `confirmationBase`).
    #[serde(default)]
    pub confirmation_required: bool,
    /// Devices that match the filter after the rollout started join its last group.
    #[serde(default = "yes")]
    pub dynamic: bool,
}

fn yes() -> bool {
    true
}

impl RolloutSpec {
    /// One clear message for the first thing wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.groups.is_empty() {
            return Err("a rollout needs at least one group".into());
        }
        if self.groups.len() > 100 {
            return Err("a rollout has at most 100 groups".into());
        }
        for (i, g) in self.groups.iter().enumerate() {
            match (&g.percent, &g.devices) {
                (Some(_), Some(_)) => return Err(format!("groups[{i}]: give percent or devices, not both")),
                (Some(p), None) if *p == 0 || *p > 100 => {
                    return Err(format!("groups[{i}].percent {p} must be 1..=100"));
                }
                (None, Some(d)) if d.is_empty() => return Err(format!("groups[{i}].devices is empty")),
                _ => {}
            }
            if g.success_threshold > 100 || g.error_threshold > 100 {
                return Err(format!("groups[{i}]: thresholds are percentages (0..=100)"));
            }
            if g.name.trim().is_empty() || g.name.len() > 100 {
                return Err(format!("groups[{i}].name must be 1..=100 characters"));
            }
        }
        if let Some(w) = &self.window {
            w.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_wrap_midnight() {
        let at = |h: i64, m: i64| (h * 60 + m) * 60_000 + 86_400_000 * 20_000;
        let w = Window { start_minute: 22 * 60, duration_minutes: 180 };
        assert!(!w.is_open(at(21, 59)));
        assert!(w.is_open(at(22, 0)));
        assert!(w.is_open(at(0, 59)));
        assert!(!w.is_open(at(1, 0)));
        let all_day = Window { start_minute: 0, duration_minutes: 1440 };
        assert!(all_day.is_open(at(13, 7)));
        assert!(Window { start_minute: 1440, duration_minutes: 1 }.validate().is_err());
        assert!(Window { start_minute: 0, duration_minutes: 0 }.validate().is_err());
    }

    #[test]
    fn states_round_trip() {
        for s in [
            ActionState::WaitConfirmation,
            ActionState::Running,
            ActionState::Downloaded,
            ActionState::Canceling,
            ActionState::Canceled,
            ActionState::Finished,
            ActionState::Error,
        ] {
            assert_eq!(ActionState::parse(s.as_str()), Some(s));
        }
        for k in [ActionKind::Forced, ActionKind::Soft, ActionKind::DownloadOnly] {
            assert_eq!(ActionKind::parse(k.as_str()), Some(k));
        }
    }

    #[test]
    fn a_spec_is_checked() {
        let g = |percent, devices| GroupSpec {
            name: "g".into(),
            percent,
            devices,
            success_threshold: 100,
            error_threshold: 0,
            approval: false,
        };
        let spec = |groups| RolloutSpec {
            groups,
            kind: ActionKind::Forced,
            speed: Speed::Standard,
            window: None,
            start_at_ms: None,
            confirmation_required: false,
            dynamic: true,
        };
        assert!(spec(vec![g(Some(10), None), g(None, None)]).validate().is_ok());
        assert!(spec(vec![]).validate().is_err());
        assert!(spec(vec![g(Some(0), None)]).validate().is_err());
        assert!(spec(vec![g(Some(5), Some(vec!["a".into()]))]).validate().is_err());
        let parsed: RolloutSpec = serde_json::from_str(r#"{"groups":[{"name":"canary","devices":["gw-1"]}]}"#).unwrap();
        assert_eq!((parsed.groups[0].success_threshold, parsed.kind, parsed.dynamic), (100, ActionKind::Soft, true));
        assert!(serde_json::from_str::<RolloutSpec>(r#"{"groups":[],"bogus":1}"#).is_err());
    }

    #[test]
    fn a_stored_spec_names_its_speed_as_the_migration_expects() {
        // Migration 3 finds the fast rollouts in stored specs by this text: it must stay what serde writes.
        let spec: RolloutSpec = serde_json::from_str(r#"{"groups":[{"name":"all"}],"speed":"fast"}"#).unwrap();
        let stored = serde_json::to_string(&spec).unwrap();
        assert!(stored.contains(r#""speed":"fast""#), "{stored}");
        assert_eq!(Speed::Fast.as_str(), "fast");
        assert_eq!(Speed::Standard.as_str(), "standard");
    }
}
