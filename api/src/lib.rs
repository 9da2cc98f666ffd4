//! The otter D-Bus API, `io.otter.Updater1`: bus, object and interface names, the named errors, the types both
//! sides exchange, and the client proxy. `otterd` serves it (`daemon/src/dbus.rs`); `otterctl` and any local
//! application use [`Updater1Proxy`] without depending on the daemon.
//!
//! The interface is described in `docs/dbus-api.md`; [`INTROSPECTION_XML`] is the checked-in introspection data,
//! kept equal to what the daemon serves by a test.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use zbus::zvariant::{self, ObjectPath, OwnedObjectPath, OwnedValue, Type, Value};

/// The well-known bus name otterd owns on the system bus.
pub const BUS_NAME: &str = "io.otter.Updater1";
/// The interface name (versioned by its `1` suffix: incompatible changes get a new interface).
pub const INTERFACE: &str = "io.otter.Updater1";
/// The object that carries the interface.
pub const OBJECT_PATH: &str = "/io/otter/Updater1";
/// Job ids are sent as object paths under this prefix (`/io/otter/Updater1/job/7`); no object is exported there.
pub const JOB_PATH_PREFIX: &str = "/io/otter/Updater1/job/";
/// The prefix of every error name.
pub const ERROR_PREFIX: &str = "io.otter.Updater1.Error";
/// The introspection data of the interface, as checked into the repository.
pub const INTROSPECTION_XML: &str = include_str!("../io.otter.Updater1.xml");

/// The object path naming job `id`.
pub fn job_path(id: u64) -> OwnedObjectPath {
    OwnedObjectPath::try_from(format!("{JOB_PATH_PREFIX}{id}")).expect("digits make a valid object path")
}

/// The job id in a job path, if it is one.
pub fn job_id(path: &ObjectPath<'_>) -> Option<u64> {
    path.as_str().strip_prefix(JOB_PATH_PREFIX)?.parse().ok()
}

/// The named errors of the interface (`io.otter.Updater1.Error.<Variant>`); each carries a one-line message.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "io.otter.Updater1.Error")]
pub enum Error {
    /// A transport or protocol error, or an error name outside this interface.
    #[zbus(error)]
    ZBus(zbus::Error),
    /// Another job is in progress.
    Busy(String),
    /// The request does not apply now (no job to cancel, nothing awaits a reboot, an inhibitor is held, the
    /// device cannot update).
    NotNow(String),
    /// The caller is neither root nor a member of the `otter` group, or passed an option only root may pass
    /// (`tls-ca`, `tls-cert`: options that make otterd read a file), or a file path only root may have otterd open.
    NotAuthorized(String),
    /// The caller holds as many inhibitors as one caller may (or otterd holds as many as it takes in all).
    LimitExceeded(String),
    /// An argument is malformed (unknown state or slot name, relative path, unknown option).
    InvalidArgument(String),
    /// The artifact cannot be installed (reported by `Completed` and `LastError` once verification ran).
    InvalidArtifact(String),
    /// `CheckForUpdate()` without a configured update server.
    NoServer(String),
    /// Anything else that went wrong in the daemon.
    Failed(String),
}

/// Install progress: the `Progress` property, signature `(utts)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Type, OwnedValue, Value)]
pub struct Progress {
    /// Completion, 0 to 100.
    pub percent: u32,
    /// Image bytes verified and written.
    pub bytes_done: u64,
    /// Image bytes to write (0 until the manifest is verified).
    pub bytes_total: u64,
    /// What is happening (`connecting`, `verifying`, `writing`, `syncing`, `done`, or empty when idle).
    pub message: String,
}

/// The `LastError` property, `(ss)`: empty strings when the last job did not fail.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Type, OwnedValue, Value)]
pub struct LastError {
    /// Stable error code (`invalid-signature`, `cancelled`, `rolled-back`, ...).
    pub code: String,
    /// Human-readable message.
    pub message: String,
}

/// One held inhibitor (an element of the `Inhibitors` property, `(ss)`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Type, OwnedValue, Value)]
pub struct Inhibitor {
    /// Who holds it (`uid 1000, pid 4242, :1.17`).
    pub who: String,
    /// Why, as given to `Inhibit()`.
    pub why: String,
}

/// A dictionary of the kind `a{sv}` carries.
pub type Dict = HashMap<String, OwnedValue>;

fn get_str(d: &Dict, key: &str) -> String {
    d.get(key).and_then(|v| <&str>::try_from(v).ok().map(str::to_owned)).unwrap_or_default()
}

fn get_u64(d: &Dict, key: &str) -> Option<u64> {
    d.get(key).and_then(|v| u64::try_from(v).ok())
}

fn owned(v: impl Into<Value<'static>>) -> OwnedValue {
    OwnedValue::try_from(v.into()).expect("plain values never carry file descriptors")
}

/// One slot as `GetSlots()` describes it (`(s name, a{sv} info)`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotInfo {
    /// `A` or `B`.
    pub name: String,
    /// `good`, `bad` or `trying`.
    pub state: String,
    /// Boots the bootloader still gives a slot on trial.
    pub attempts_left: Option<u32>,
    /// The running system booted from it.
    pub booted: bool,
    /// The bootloader boots it next.
    pub primary: bool,
    /// Its block device or file.
    pub device: String,
}

impl SlotInfo {
    /// The D-Bus form: keys `state`, `attempts-left` (only while trying), `booted`, `primary`, `device`.
    pub fn to_dbus(&self) -> (String, Dict) {
        let mut d = Dict::new();
        d.insert("state".into(), owned(self.state.clone()));
        if let Some(a) = self.attempts_left {
            d.insert("attempts-left".into(), owned(a));
        }
        d.insert("booted".into(), owned(self.booted));
        d.insert("primary".into(), owned(self.primary));
        d.insert("device".into(), owned(self.device.clone()));
        (self.name.clone(), d)
    }

    /// Reads the D-Bus form (unknown keys are ignored, missing ones default).
    pub fn from_dbus(name: String, d: &Dict) -> Self {
        let flag = |k: &str| d.get(k).and_then(|v| bool::try_from(v).ok()).unwrap_or(false);
        Self {
            name,
            state: get_str(d, "state"),
            attempts_left: d.get("attempts-left").and_then(|v| u32::try_from(v).ok()),
            booted: flag("booted"),
            primary: flag("primary"),
            device: get_str(d, "device"),
        }
    }
}

/// One finished job as `GetHistory()` describes it (an `a{sv}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Job id.
    pub id: u64,
    /// File path or URL.
    pub source: String,
    /// `committed`, `rolled-back`, `failed` or `cancelled`.
    pub result: String,
    /// Error code (empty unless failed or rolled back).
    pub code: String,
    /// Message (empty unless failed or rolled back).
    pub message: String,
    /// Version of the artifact, once verified.
    pub version: String,
    /// Slot the job started from.
    pub from: String,
    /// Slot it installed.
    pub target: String,
    /// Whether a server (not a local user) requested it.
    pub automatic: bool,
    /// Start, seconds since the epoch.
    pub started_at: u64,
    /// End, seconds since the epoch.
    pub finished_at: u64,
}

impl HistoryEntry {
    /// The D-Bus form: keys `id`, `source`, `result`, `code`, `message`, `version`, `from`, `target`,
    /// `automatic`, `started-at`, `finished-at`.
    pub fn to_dbus(&self) -> Dict {
        let mut d = Dict::new();
        d.insert("id".into(), owned(self.id));
        for (k, v) in [
            ("source", &self.source),
            ("result", &self.result),
            ("code", &self.code),
            ("message", &self.message),
            ("version", &self.version),
            ("from", &self.from),
            ("target", &self.target),
        ] {
            d.insert(k.into(), owned(v.clone()));
        }
        d.insert("automatic".into(), owned(self.automatic));
        d.insert("started-at".into(), owned(self.started_at));
        d.insert("finished-at".into(), owned(self.finished_at));
        d
    }

    /// Reads the D-Bus form.
    pub fn from_dbus(d: &Dict) -> Self {
        Self {
            id: get_u64(d, "id").unwrap_or(0),
            source: get_str(d, "source"),
            result: get_str(d, "result"),
            code: get_str(d, "code"),
            message: get_str(d, "message"),
            version: get_str(d, "version"),
            from: get_str(d, "from"),
            target: get_str(d, "target"),
            automatic: d.get("automatic").and_then(|v| bool::try_from(v).ok()).unwrap_or(false),
            started_at: get_u64(d, "started-at").unwrap_or(0),
            finished_at: get_u64(d, "finished-at").unwrap_or(0),
        }
    }
}

pub use proxy::{CompletedArgs, CompletedStream, Updater1Proxy};

/// The generated proxy; the macro emits helper items without docs, so the lint is relaxed for this module only.
#[allow(missing_docs)]
mod proxy {
    use super::*;

    /// The client proxy (async). Errors named by the interface come back as the matching [`Error`] variant.
    #[zbus::proxy(
        interface = "io.otter.Updater1",
        default_service = "io.otter.Updater1",
        default_path = "/io/otter/Updater1",
        gen_blocking = false
    )]
    pub trait Updater1 {
        /// Installs an artifact from an absolute file path or an `http(s)://` URL; returns the job.
        fn install(&self, source: &str, options: HashMap<&str, Value<'_>>) -> Result<OwnedObjectPath, Error>;

        /// Installs the artifact the caller opened (a file or a pipe): the daemon needs no access to its path.
        /// Option `name` (string) names it in the status and history; returns the job.
        fn install_fd(
            &self,
            artifact: zvariant::Fd<'_>,
            options: HashMap<&str, Value<'_>>,
        ) -> Result<OwnedObjectPath, Error>;

        /// Cancels the job (until the reboot into the new slot).
        fn cancel(&self) -> Result<(), Error>;

        /// Asks the update server client to poll now.
        fn check_for_update(&self) -> Result<(), Error>;

        /// Reboots into the installed slot (for the manual reboot policy).
        fn reboot(&self) -> Result<(), Error>;

        /// Updates the server holds back until a local application consents: (action id, version).
        fn get_confirmations(&self) -> Result<Vec<(String, String)>, Error>;

        /// Consents to (or declines) the update of a server action; `details` goes to the server.
        fn confirm(&self, action: &str, accept: bool, details: &str) -> Result<(), Error>;

        /// The update server asks for consent to an update (answer with `confirm`).
        #[zbus(signal)]
        fn confirmation_requested(&self, action: &str, version: &str) -> zbus::Result<()>;

        /// Marks a slot `good`, `bad` or `active`; `slot` is `booted`, `other`, `A` or `B`. Returns the slot's name.
        fn mark(&self, state: &str, slot: &str) -> Result<String, Error>;

        /// Both slots and what the bootloader says about them.
        fn get_slots(&self) -> Result<Vec<(String, Dict)>, Error>;

        /// Finished jobs, oldest first.
        fn get_history(&self) -> Result<Vec<Dict>, Error>;

        /// Takes an inhibitor: no install starts and no reboot happens while the returned fd (or a copy) is open.
        fn inhibit(&self, why: &str) -> Result<zvariant::OwnedFd, Error>;

        /// `idle`, `installing`, `awaiting-reboot`, `rebooting`, `assessing`, `rolling-back`.
        #[zbus(property)]
        fn operation(&self) -> zbus::Result<String>;

        /// Install progress.
        #[zbus(property)]
        fn progress(&self) -> zbus::Result<Progress>;

        /// The booted slot (`A`, `B`, or empty if unknown).
        #[zbus(property)]
        fn booted_slot(&self) -> zbus::Result<String>;

        /// The slot the bootloader boots next.
        #[zbus(property)]
        fn primary_slot(&self) -> zbus::Result<String>;

        /// otterd's version.
        #[zbus(property)]
        fn version(&self) -> zbus::Result<String>;

        /// The device type artifacts must name.
        #[zbus(property)]
        fn compatible(&self) -> zbus::Result<String>;

        /// A new slot waits for the reboot.
        #[zbus(property)]
        fn pending_reboot(&self) -> zbus::Result<bool>;

        /// Why the last job failed or the device cannot update (empty strings otherwise).
        #[zbus(property)]
        fn last_error(&self) -> zbus::Result<LastError>;

        /// The inhibitors held.
        #[zbus(property)]
        fn inhibitors(&self) -> zbus::Result<Vec<Inhibitor>>;

        /// A job finished a step: `result` is `installed` (slot written and verified, reboot pending), then
        /// `committed`, `rolled-back`, `failed` or `cancelled`.
        #[zbus(signal)]
        fn completed(&self, job: ObjectPath<'_>, result: &str, code: &str, message: &str) -> zbus::Result<()>;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_paths_round_trip() {
        let p = job_path(42);
        assert_eq!(p.as_str(), "/io/otter/Updater1/job/42");
        assert_eq!(job_id(&p), Some(42));
        assert_eq!(job_id(&ObjectPath::try_from("/io/otter/Updater1").unwrap()), None);
    }

    #[test]
    fn dicts_round_trip() {
        let s = SlotInfo {
            name: "B".into(),
            state: "trying".into(),
            attempts_left: Some(2),
            booted: false,
            primary: true,
            device: "/dev/mmcblk0p3".into(),
        };
        let (name, d) = s.to_dbus();
        assert_eq!(SlotInfo::from_dbus(name, &d), s);
        let h = HistoryEntry { id: 3, source: "/tmp/x".into(), result: "failed".into(), ..Default::default() };
        assert_eq!(HistoryEntry::from_dbus(&h.to_dbus()), h);
    }

    #[test]
    fn named_errors_map_to_variants() {
        use zbus::DBusError;
        let e = Error::Busy("job 3 is Installing".into());
        assert_eq!(e.name().as_str(), "io.otter.Updater1.Error.Busy");
        assert_eq!(Error::NoServer(String::new()).name().as_str(), "io.otter.Updater1.Error.NoServer");
    }
}
