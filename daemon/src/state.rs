//! Persisted engine state: one JSON file in the state directory, replaced atomically.

use std::fs;
use std::path::{Path, PathBuf};

use crate::engine::Persisted;

/// File name of the state in the state directory.
pub const STATE_FILE: &str = "state.json";

/// Errors reading or writing the state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// I/O on the state file or directory.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Replacing the state file failed; the old state is still there (see [`otter_common::durable`]).
    #[error(transparent)]
    Save(#[from] otter_common::durable::ReplaceError),
    /// The state file does not parse; it was moved aside to `moved_to`.
    #[error("state file {path} is corrupt ({reason}); moved it to {moved_to} and started from an idle state")]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// Parser message.
        reason: String,
        /// Where the corrupt file now is.
        moved_to: PathBuf,
    },
}

/// Reads and writes [`Persisted`] in a state directory.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// A store in `dir` (created if missing).
    pub fn new(dir: &Path) -> Result<Self, StateError> {
        fs::create_dir_all(dir).map_err(|source| StateError::Io { path: dir.to_owned(), source })?;
        Ok(Self { dir: dir.to_owned() })
    }

    /// The state file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Loads the state. A missing file is a fresh device (default state). A corrupt file is moved aside and the
    /// default state returned together with the error to report: the daemon must keep running and must not act
    /// on a job it cannot read (a half-understood job could trigger reboots in a loop).
    pub fn load(&self) -> (Persisted, Option<StateError>) {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Persisted::default(), None),
            Err(source) => return (Persisted::default(), Some(StateError::Io { path, source })),
        };
        match serde_json::from_slice::<Persisted>(&bytes) {
            Ok(p) => (p, None),
            Err(e) => {
                let moved_to = self.dir.join(format!("{STATE_FILE}.corrupt"));
                let moved = fs::rename(&path, &moved_to);
                let err = match moved {
                    Ok(()) => StateError::Corrupt { path, reason: e.to_string(), moved_to },
                    Err(source) => StateError::Io { path, source },
                };
                (Persisted::default(), Some(err))
            }
        }
    }

    /// Writes the state atomically ([`otter_common::durable::replace`]): a power cut at any point leaves
    /// either the old or the new state, complete.
    pub fn save(&self, state: &Persisted) -> Result<(), StateError> {
        let path = self.path();
        let mut bytes = serde_json::to_vec_pretty(state).expect("state serialises");
        bytes.push(b'\n');
        Ok(otter_common::durable::replace(&path, &bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Job, JobPhase};
    use otter_bootloader::Slot;

    #[test]
    fn round_trip_and_missing_file() {
        let d = tempfile::tempdir().unwrap();
        let s = StateStore::new(&d.path().join("state")).unwrap();
        let (p, err) = s.load();
        assert!(err.is_none());
        assert_eq!(p, Persisted::default());
        let mut p = Persisted { security_version: 7, next_job_id: 3, ..Persisted::default() };
        p.job = Some(Job {
            id: 2,
            source: "/tmp/x.otter".into(),
            automatic: false,
            remote_id: None,
            from: Slot::A,
            target: Slot::B,
            phase: JobPhase::AwaitingReboot,
            artifact: None,
            started_at: 1,
            updated_at: 2,
            assess_started_at: None,
            trial_boots: 0,
            rollback_reason: None,
            cancel_requested: false,
        });
        s.save(&p).unwrap();
        let (loaded, err) = s.load();
        assert!(err.is_none());
        assert_eq!(loaded, p);
        let names: Vec<_> = fs::read_dir(d.path().join("state")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["state.json"], "no temp file is left behind");
    }

    #[test]
    fn corrupt_file_is_moved_aside() {
        let d = tempfile::tempdir().unwrap();
        let s = StateStore::new(d.path()).unwrap();
        fs::write(s.path(), b"{\"job\": {\"id\": tru").unwrap();
        let (p, err) = s.load();
        assert_eq!(p, Persisted::default());
        assert!(matches!(err, Some(StateError::Corrupt { .. })), "{err:?}");
        assert!(d.path().join("state.json.corrupt").exists());
        assert!(!s.path().exists());
        // The next start is clean.
        assert!(s.load().1.is_none());
    }
}
