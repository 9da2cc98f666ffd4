//! The DDI JSON documents as typed values: pure (de)serialisation, no I/O. Unknown fields are ignored, as the
//! DDI contract asks; sizes are `u64` (artifacts can exceed 4 GiB); ids are strings on the wire.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// A hypermedia link.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Link {
    /// The URL, to be used exactly as given.
    pub href: String,
}

/// `GET {controller}`: the poll answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ControllerBase {
    /// Polling configuration.
    #[serde(default)]
    pub config: Option<ControllerConfig>,
    /// What the server wants from the device next.
    #[serde(rename = "_links", default)]
    pub links: BaseLinks,
}

/// `config` of the poll answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ControllerConfig {
    /// Polling settings.
    #[serde(default)]
    pub polling: Option<Polling>,
}

/// `config.polling`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Polling {
    /// `HH:MM:SS`.
    #[serde(default)]
    pub sleep: Option<String>,
}

/// `_links` of the poll answer: at most one action link, plus `configData` when attributes are wanted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BaseLinks {
    /// An update to carry out.
    pub deployment_base: Option<Link>,
    /// A cancel request.
    pub cancel_action: Option<Link>,
    /// An update waiting for the device's consent.
    pub confirmation_base: Option<Link>,
    /// The server wants the device's attributes.
    pub config_data: Option<Link>,
    /// The last installed action.
    pub installed_base: Option<Link>,
}

impl ControllerBase {
    /// The `sleep` string, if any.
    pub fn sleep(&self) -> Option<&str> {
        self.config.as_ref()?.polling.as_ref()?.sleep.as_deref()
    }
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        S(String),
        N(u64),
    }
    Ok(match Id::deserialize(d)? {
        Id::S(s) => s,
        Id::N(n) => n.to_string(),
    })
}

/// `GET deploymentBase/{id}` (and `confirmationBase/{id}`, whose body has `confirmation` instead of
/// `deployment`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DeploymentBase {
    /// Action id.
    #[serde(deserialize_with = "string_or_number")]
    pub id: String,
    /// What to do.
    #[serde(alias = "confirmation")]
    pub deployment: Deployment,
    /// Server-side history, for display.
    #[serde(rename = "actionHistory", default)]
    pub action_history: Option<ActionHistory>,
}

/// `actionHistory`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ActionHistory {
    /// Server status.
    #[serde(default)]
    pub status: Option<String>,
    /// Messages.
    #[serde(default)]
    pub messages: Vec<String>,
}

/// How the download or the update should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HandlingType {
    /// Do not do it (now).
    Skip,
    /// Do it; the device may defer (soft).
    Attempt,
    /// Do it now.
    Forced,
}

/// Whether the scheduled maintenance window is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaintenanceWindow {
    /// Open: install.
    Available,
    /// Closed: download at most.
    Unavailable,
}

/// `deployment`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    /// Download handling.
    pub download: HandlingType,
    /// Update handling (`skip`: download only).
    pub update: HandlingType,
    /// Present only when the action has a maintenance schedule.
    #[serde(default)]
    pub maintenance_window: Option<MaintenanceWindow>,
    /// Software modules.
    #[serde(default)]
    pub chunks: Vec<Chunk>,
}

/// A software module.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Chunk {
    /// Module type (`os`, `bApp`...).
    pub part: String,
    /// Version.
    #[serde(default)]
    pub version: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Files.
    #[serde(default)]
    pub artifacts: Vec<Artifact>,
    /// Key/value metadata.
    #[serde(default)]
    pub metadata: Vec<Metadata>,
}

/// A metadata entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Metadata {
    /// Key.
    pub key: String,
    /// Value.
    #[serde(default)]
    pub value: String,
}

/// A file of a software module.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Artifact {
    /// File name.
    pub filename: String,
    /// Size in bytes.
    #[serde(default)]
    pub size: u64,
    /// Hashes (sha256 may be absent on old servers).
    #[serde(default)]
    pub hashes: Hashes,
    /// Download links.
    #[serde(rename = "_links", default)]
    pub links: ArtifactLinks,
}

/// `hashes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Hashes {
    /// SHA-1, hex.
    pub sha1: Option<String>,
    /// MD5, hex.
    pub md5: Option<String>,
    /// SHA-256, hex.
    pub sha256: Option<String>,
}

/// An artifact's `_links`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ArtifactLinks {
    /// HTTPS download.
    pub download: Option<Link>,
    /// Plain HTTP download.
    #[serde(rename = "download-http")]
    pub download_http: Option<Link>,
}

impl Artifact {
    /// The download URL: `download` (https) preferred, `download-http` otherwise.
    pub fn url(&self) -> Option<&str> {
        self.links.download.as_ref().or(self.links.download_http.as_ref()).map(|l| l.href.as_str())
    }
}

fn is_otter(a: &Artifact) -> bool {
    a.filename.ends_with(".otter")
}

impl Deployment {
    /// Our artifact: the first `.otter` file of the first chunk whose part is `part`.
    pub fn artifact(&self, part: &str) -> Option<(&Chunk, &Artifact)> {
        self.artifacts(part).into_iter().next()
    }

    /// Every `.otter` file of the first chunk whose part is `part`, smallest first: a deployment that offers a
    /// delta beside the full artifact lists both, and the device tries the delta first.
    pub fn artifacts(&self, part: &str) -> Vec<(&Chunk, &Artifact)> {
        let Some(chunk) = self.chunks.iter().find(|c| c.part == part && c.artifacts.iter().any(is_otter)) else {
            return Vec::new();
        };
        let mut found: Vec<_> = chunk.artifacts.iter().filter(|a| is_otter(a)).map(|a| (chunk, a)).collect();
        found.sort_by_key(|(_, a)| a.size);
        found
    }
}

/// `GET cancelAction/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelActionBase {
    /// Id of the cancel action.
    #[serde(deserialize_with = "string_or_number")]
    pub id: String,
    /// What to stop.
    pub cancel_action: CancelAction,
}

/// `cancelAction`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelAction {
    /// The action to stop.
    #[serde(deserialize_with = "string_or_number")]
    pub stop_id: String,
}

/// `status.execution` of a feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Execution {
    /// Finished (with `finished` success or failure).
    Closed,
    /// Working on it.
    Proceeding,
    /// Cancelled.
    Canceled,
    /// Scheduled.
    Scheduled,
    /// Refused (e.g. a cancel after the point of no return).
    Rejected,
    /// Resumed.
    Resumed,
    /// The artifact was downloaded (and, here, verified and written).
    Downloaded,
    /// Download started.
    Download,
}

/// `status.result.finished`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Finished {
    /// Succeeded.
    Success,
    /// Failed.
    Failure,
    /// Not finished.
    None,
}

/// `status.result.progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressCount {
    /// Done.
    pub cnt: u32,
    /// Of.
    pub of: u32,
}

/// `status.result`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackResult {
    /// Finished?
    pub finished: Finished,
    /// Progress, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub progress: Option<ProgressCount>,
}

/// `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackStatus {
    /// Execution state.
    pub execution: Execution,
    /// Result.
    pub result: FeedbackResult,
    /// Device-specific code.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub code: Option<i32>,
    /// Messages (at most 50 are kept by the server).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub details: Vec<String>,
}

/// A feedback body (`POST .../feedback`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feedback {
    /// Milliseconds since the epoch.
    pub timestamp: u64,
    /// The status.
    pub status: FeedbackStatus,
}

impl Feedback {
    /// A feedback with `execution` and `finished`, now.
    pub fn new(execution: Execution, finished: Finished, details: Vec<String>) -> Self {
        let timestamp =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        Self {
            timestamp,
            status: FeedbackStatus {
                execution,
                result: FeedbackResult { finished, progress: None },
                code: None,
                details,
            },
        }
    }

    /// With progress.
    pub fn progress(mut self, cnt: u32, of: u32) -> Self {
        self.status.result.progress = Some(ProgressCount { cnt, of });
        self
    }

    /// With a code.
    pub fn code(mut self, code: i32) -> Self {
        self.status.code = Some(code);
        self
    }
}

/// `configData` update mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Add or overwrite the given keys.
    Merge,
    /// Replace all attributes.
    Replace,
    /// Remove the given keys.
    Remove,
}

/// `PUT configData` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigData {
    /// Mode.
    pub mode: Mode,
    /// Attributes (non-empty, at most 100).
    pub data: BTreeMap<String, String>,
}

/// The device's answer to a consent request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Confirmation {
    /// Go ahead.
    Confirmed,
    /// No.
    Denied,
}

/// `POST confirmationBase/{id}/feedback` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfirmationFeedback {
    /// The answer.
    pub confirmation: Confirmation,
    /// Device-specific code.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub code: Option<i32>,
    /// Messages.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

/// Why a `sleep` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid polling sleep {value:?}: {reason}")]
pub struct SleepError {
    /// The value.
    pub value: String,
    /// What is wrong.
    pub reason: &'static str,
}

/// Parses a DDI `sleep` (`HH:MM:SS`) strictly: two or more hour digits, two minute and two second digits,
/// minutes and seconds below 60, nothing else (no signs, spaces or fractions), and never zero.
pub fn parse_sleep(value: &str) -> Result<Duration, SleepError> {
    let err = |reason| SleepError { value: value.to_owned(), reason };
    let mut parts = value.split(':');
    let (Some(h), Some(m), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(err("not HH:MM:SS"));
    };
    let digits =
        |p: &str, min: usize, max: usize| (min..=max).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
    if !digits(h, 2, 6) || !digits(m, 2, 2) || !digits(s, 2, 2) {
        return Err(err("not HH:MM:SS"));
    }
    let (h, m, s): (u64, u64, u64) = (h.parse().unwrap_or(0), m.parse().unwrap_or(0), s.parse().unwrap_or(0));
    if m >= 60 || s >= 60 {
        return Err(err("minutes and seconds must be below 60"));
    }
    let total = h * 3600 + m * 60 + s;
    if total == 0 {
        return Err(err("a zero interval would poll in a loop"));
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_parsing() {
        assert_eq!(parse_sleep("00:05:00"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_sleep("00:00:01"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_sleep("24:00:00"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_sleep("100:00:00"), Ok(Duration::from_secs(360_000)));
        for bad in [
            "",
            "00:00:00",
            "5",
            "00:05",
            "0:05:00",
            "00:5:00",
            "00:05:0",
            "00:60:00",
            "00:00:60",
            "-1:00:00",
            "00:-1:00",
            " 00:05:00",
            "00:05:00 ",
            "00:05:00.5",
            "aa:bb:cc",
            "00:05:00:00",
            "+00:05:00",
            "１２:00:00",
            "9999999:00:00",
        ] {
            assert!(parse_sleep(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn deployment_parses_and_ignores_unknown_fields() {
        let text = r#"{"id":"8","unknown":1,"deployment":{"download":"forced","update":"attempt",
          "maintenanceWindow":"available","chunks":[{"part":"bApp","version":"1","name":"app","artifacts":[]},
          {"part":"os","version":"1.0.79","name":"gateway-os","artifacts":[
            {"filename":"rootfs.swu","size":1,"hashes":{"sha1":"a","md5":"b"},"_links":{}},
            {"filename":"rootfs.otter","size":5000000000,"hashes":{"sha1":"a","md5":"b","sha256":"c"},
             "_links":{"download":{"href":"https://x/a"},"download-http":{"href":"http://x/a"}}}],
          "metadata":[{"key":"k","value":"v"}]}]},"actionHistory":{"status":"RUNNING","messages":["m"]}}"#;
        let d: DeploymentBase = serde_json::from_str(text).unwrap();
        assert_eq!(d.id, "8");
        assert_eq!(d.deployment.update, HandlingType::Attempt);
        assert_eq!(d.deployment.maintenance_window, Some(MaintenanceWindow::Available));
        let (chunk, art) = d.deployment.artifact("os").unwrap();
        assert_eq!(chunk.version, "1.0.79");
        assert_eq!(art.size, 5_000_000_000);
        assert_eq!(art.url(), Some("https://x/a"));
        assert!(d.deployment.artifact("firmware").is_none());
        let c: DeploymentBase =
            serde_json::from_str(r#"{"id":9,"confirmation":{"download":"attempt","update":"attempt","chunks":[]}}"#)
                .unwrap();
        assert_eq!(c.id, "9");
    }

    #[test]
    fn feedback_serialises_like_the_ddi_examples() {
        let mut f = Feedback::new(Execution::Proceeding, Finished::None, vec!["Writing slot B".into()]).progress(2, 5);
        f.timestamp = 1;
        assert_eq!(
            serde_json::to_value(&f).unwrap(),
            serde_json::json!({"timestamp":1,"status":{"execution":"proceeding",
                "result":{"finished":"none","progress":{"cnt":2,"of":5}},"details":["Writing slot B"]}})
        );
        let base: ControllerBase = serde_json::from_str(
            r#"{"config":{"polling":{"sleep":"00:05:00"}},"_links":{"cancelAction":{"href":"h"}}}"#,
        )
        .unwrap();
        assert_eq!(base.sleep(), Some("00:05:00"));
        assert_eq!(base.links.cancel_action.unwrap().href, "h");
    }
}
