//! The DDI documents as typed values, following hawkBit's JSON model (`hawkbit-ddi-api` `json/model`): what the
//! server answers (serialised) and what devices send (deserialised, unknown fields ignored as hawkBit does). Pure
//! codecs: no I/O, no database.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A hypermedia link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    /// Absolute URL.
    pub href: String,
}

impl Link {
    /// A link to `href`.
    pub fn to(href: String) -> Self {
        Self { href }
    }
}

/// `GET {controller}`: the poll answer (hawkBit `DdiControllerBase`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControllerBase {
    /// `{"polling":{"sleep":"HH:MM:SS"}}`.
    pub config: Config,
    /// What the device should look at next.
    #[serde(rename = "_links")]
    pub links: BaseLinks,
}

/// `config` of the poll answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// Polling settings.
    pub polling: Polling,
}

/// `config.polling`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Polling {
    /// `HH:MM:SS`.
    pub sleep: String,
}

/// `_links` of the poll answer: at most one of the three action links.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BaseLinks {
    /// An action waiting for the device's consent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirmation_base: Option<Link>,
    /// An action being cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_action: Option<Link>,
    /// An action to carry out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment_base: Option<Link>,
    /// The last installed action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub installed_base: Option<Link>,
    /// The server wants the device's attributes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_data: Option<Link>,
}

/// DDI handling type of `download` and `update`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Handling {
    /// Not now.
    Skip,
    /// When the device chooses (soft).
    Attempt,
    /// Now.
    Forced,
}

/// `maintenanceWindow`: present only when the action has a maintenance window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MaintenanceWindow {
    /// Open: install now.
    Available,
    /// Closed: download at most.
    Unavailable,
}

/// `deployment` (and `confirmation`) of a deployment document (hawkBit `DdiDeployment`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    /// Download handling.
    pub download: Handling,
    /// Update handling.
    pub update: Handling,
    /// Whether the window is open, if the action has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maintenance_window: Option<MaintenanceWindow>,
    /// Software modules: here always one, part `os`.
    pub chunks: Vec<Chunk>,
}

/// A software module (hawkBit `DdiChunk`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Chunk {
    /// Module type: `os`, what otterd, RAUC and SWUpdate look for.
    pub part: String,
    /// The artifact's version (from its signed manifest).
    pub version: String,
    /// A name for display.
    pub name: String,
    /// The files.
    pub artifacts: Vec<Artifact>,
}

/// A file of a software module (hawkBit `DdiArtifact`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Artifact {
    /// File name.
    pub filename: String,
    /// Hashes, hex.
    pub hashes: Hashes,
    /// Size in bytes.
    pub size: u64,
    /// Download links.
    #[serde(rename = "_links")]
    pub links: ArtifactLinks,
}

/// `hashes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hashes {
    /// SHA-1.
    pub sha1: String,
    /// MD5.
    pub md5: String,
    /// SHA-256.
    pub sha256: String,
}

/// An artifact's `_links`: the same signed link under both names (clients pick one by their TLS setting).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArtifactLinks {
    /// Download (hawkBit: HTTPS).
    pub download: Link,
    /// Download (hawkBit: plain HTTP).
    #[serde(rename = "download-http")]
    pub download_http: Link,
}

/// `actionHistory` (hawkBit `DdiActionHistory`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActionHistory {
    /// The action's state in hawkBit's words (`RUNNING`, `FINISHED`, …).
    pub status: String,
    /// The newest messages, oldest first.
    pub messages: Vec<String>,
}

/// `GET deploymentBase/{id}` and `installedBase/{id}` (hawkBit `DdiDeploymentBase`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentBase {
    /// Action id, a string as in hawkBit.
    pub id: String,
    /// What to do.
    pub deployment: Deployment,
    /// Present when asked for with `?actionHistory=N` and there is some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action_history: Option<ActionHistory>,
}

/// `GET confirmationBase/{id}` (hawkBit `DdiConfirmationBaseAction`): the deployment under `confirmation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfirmationBaseAction {
    /// Action id.
    pub id: String,
    /// What the device is asked to consent to.
    pub confirmation: Deployment,
    /// As in [`DeploymentBase`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action_history: Option<ActionHistory>,
}

/// `GET confirmationBase` (hawkBit `DdiConfirmationBase`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfirmationBase {
    /// Auto-confirmation state.
    pub auto_confirm: AutoConfirm,
    /// `confirmationBase` when an action waits for consent.
    #[serde(rename = "_links")]
    pub links: ConfirmationLinks,
}

/// `autoConfirm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoConfirm {
    /// Whether the device confirmed everything in advance.
    pub active: bool,
    /// Who turned it on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initiator: Option<String>,
    /// Why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remark: Option<String>,
    /// When (ms since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activated_at: Option<i64>,
}

/// `POST confirmationBase/activateAutoConfirm` (hawkBit `DdiActivateAutoConfirmation`); both fields optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ActivateAutoConfirm {
    /// Who turns it on (a user or an application on the device).
    #[serde(default)]
    pub initiator: Option<String>,
    /// Why.
    #[serde(default)]
    pub remark: Option<String>,
}

/// `_links` of `GET confirmationBase`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfirmationLinks {
    /// The action waiting for consent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirmation_base: Option<Link>,
    /// Where to turn auto-confirmation on (when off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activate_auto_confirm: Option<Link>,
    /// Where to turn it off (when on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deactivate_auto_confirm: Option<Link>,
}

/// `GET cancelAction/{id}` (hawkBit `DdiCancel`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cancel {
    /// Id of the cancel request (the action's id, as hawkBit does).
    pub id: String,
    /// What to stop.
    pub cancel_action: CancelActionToStop,
}

/// `cancelAction`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelActionToStop {
    /// The action to stop.
    pub stop_id: String,
}

/// `status.execution` of a feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Execution {
    /// Done (with `finished` success or failure).
    Closed,
    /// Working on it.
    Proceeding,
    /// The device cancelled.
    Canceled,
    /// Scheduled on the device.
    Scheduled,
    /// The device refuses.
    Rejected,
    /// Resumed.
    Resumed,
    /// The artifact is downloaded.
    Downloaded,
    /// The download started.
    Download,
}

impl Execution {
    /// The DDI word.
    pub fn as_str(self) -> &'static str {
        match self {
            Execution::Closed => "closed",
            Execution::Proceeding => "proceeding",
            Execution::Canceled => "canceled",
            Execution::Scheduled => "scheduled",
            Execution::Rejected => "rejected",
            Execution::Resumed => "resumed",
            Execution::Downloaded => "downloaded",
            Execution::Download => "download",
        }
    }
}

/// `status.result.finished`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Finished {
    /// Succeeded.
    Success,
    /// Failed.
    Failure,
    /// Not finished.
    None,
}

impl Finished {
    /// The DDI word.
    pub fn as_str(self) -> &'static str {
        match self {
            Finished::Success => "success",
            Finished::Failure => "failure",
            Finished::None => "none",
        }
    }
}

/// `status.result.progress`: informational, so read leniently — RAUC's Python client sends `{}` or
/// `{"percentage": 50}` instead of hawkBit's `cnt`/`of` (server/tests/rauc_hawkbit.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Progress {
    /// Done.
    #[serde(default)]
    pub cnt: Option<u64>,
    /// Of.
    #[serde(default)]
    pub of: Option<u64>,
}

/// `status.result`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FeedbackResult {
    /// Whether it is over.
    pub finished: Finished,
    /// Progress, if any.
    #[serde(default)]
    pub progress: Option<Progress>,
}

/// `status` of a feedback.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FeedbackStatus {
    /// Execution state.
    pub execution: Execution,
    /// Result.
    pub result: FeedbackResult,
    /// Device-specific code.
    #[serde(default)]
    pub code: Option<i64>,
    /// Messages.
    #[serde(default)]
    pub details: Option<Vec<String>>,
}

/// `POST deploymentBase/{id}/feedback` and `cancelAction/{id}/feedback` (hawkBit `DdiActionFeedback`). Older
/// clients also send `id` and `time`; they are ignored, like every unknown field.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Feedback {
    /// Milliseconds since the epoch (the device's clock; informational).
    #[serde(default)]
    pub timestamp: Option<i64>,
    /// The status.
    pub status: FeedbackStatus,
}

/// A consent decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Confirmation {
    /// Go ahead.
    Confirmed,
    /// No (the action keeps waiting, as in hawkBit).
    Denied,
}

/// `POST confirmationBase/{id}/feedback` (hawkBit `DdiConfirmationFeedback`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ConfirmationFeedback {
    /// The decision.
    pub confirmation: Confirmation,
    /// Device-specific code.
    #[serde(default)]
    pub code: Option<i64>,
    /// Messages.
    #[serde(default)]
    pub details: Option<Vec<String>>,
}

/// `configData` update mode; absent means merge, as in hawkBit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Add or overwrite the given keys.
    #[default]
    Merge,
    /// Replace every attribute with the given ones.
    Replace,
    /// Remove the given keys (their values are ignored).
    Remove,
}

/// `PUT configData` (hawkBit `DdiConfigData`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ConfigData {
    /// The attributes.
    #[serde(default)]
    pub data: Option<BTreeMap<String, String>>,
    /// How to apply them.
    #[serde(default)]
    pub mode: Option<Mode>,
}

/// `POST …/enroll` (otter's own): what the device may say about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct EnrollRequest {
    /// Its device type, if it knows it.
    #[serde(default)]
    pub compatible: Option<String>,
}

/// The answer to an enrollment: the device's own credential, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollAnswer {
    /// The registered controller id.
    pub controller_id: String,
    /// The target token for `Authorization: TargetToken …`.
    pub target_token: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feedback_from_otterd_rauc_and_old_clients_parses() {
        let otterd = r#"{"timestamp":1,"status":{"execution":"proceeding","result":{"finished":"none",
            "progress":{"cnt":2,"of":5}},"details":["Writing slot B"]}}"#;
        let f: Feedback = serde_json::from_str(otterd).unwrap();
        assert_eq!((f.status.execution, f.status.result.finished), (Execution::Proceeding, Finished::None));
        // rauc-hawkbit-updater / old hawkBit clients: `id` and `time`, no timestamp, unknown fields.
        let old = r#"{"id":"5","time":"20240101T000000","status":{"execution":"closed",
            "result":{"finished":"success"},"extra":1},"x":{}}"#;
        let f: Feedback = serde_json::from_str(old).unwrap();
        assert_eq!((f.status.execution, f.status.result.finished), (Execution::Closed, Finished::Success));
        assert!(
            serde_json::from_str::<Feedback>(r#"{"status":{"execution":"exploded","result":{"finished":"none"}}}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<Feedback>(r#"{"status":{"execution":"closed"}}"#).is_err());
    }

    #[test]
    fn a_poll_answer_has_only_the_links_given() {
        let b = ControllerBase {
            config: Config { polling: Polling { sleep: "00:05:00".into() } },
            links: BaseLinks { deployment_base: Some(Link::to("h".into())), ..Default::default() },
        };
        assert_eq!(
            serde_json::to_value(&b).unwrap(),
            serde_json::json!({"config":{"polling":{"sleep":"00:05:00"}},"_links":{"deploymentBase":{"href":"h"}}})
        );
    }
}
