//! What was already reported to the server, per action: a small JSON file in the state directory, replaced
//! atomically, so a restart neither loses a report (it is sent again if the crash came before the server
//! acknowledged it) nor repeats one the server already took.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name in the state directory.
pub const REPORTED_FILE: &str = "hawkbit.json";
/// Actions remembered (oldest dropped first).
const KEEP: usize = 32;

/// What was reported for one action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ActionReport {
    /// Order of insertion (for dropping the oldest).
    pub seq: u64,
    /// `downloaded` was acknowledged.
    pub downloaded: bool,
    /// The final `closed` (or a cancel answer) was acknowledged, or the server said the action is gone.
    pub closed: bool,
    /// A server cancel was accepted: the local `Cancelled` outcome needs no deployment feedback.
    pub cancel_accepted: bool,
    /// The final `closed` feedback sent, to answer with it again when a server offers the closed action again
    /// (a server that reuses action ids).
    #[serde(default)]
    pub final_feedback: Option<super::model::Feedback>,
    /// The artifact the action started installing (name, version, size, hashes): the action stays bound to it
    /// across restarts, so a server that now serves another file under the same action cannot get it installed
    /// and reported as this action's result.
    #[serde(default)]
    pub artifact: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ReportFile {
    actions: BTreeMap<String, ActionReport>,
    next_seq: u64,
}

/// The reported-state file. Mutators change memory only; [`Reported::update`] changes and saves in one call.
#[derive(Debug)]
pub struct Reported {
    dir: PathBuf,
    data: ReportFile,
}

impl Reported {
    /// Loads `dir/hawkbit.json` (missing or corrupt: empty, with a warning for corrupt).
    pub fn load(dir: &Path) -> Self {
        let path = dir.join(REPORTED_FILE);
        let data = match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!("{}: {e}; starting with an empty report log", path.display());
                ReportFile::default()
            }),
            Err(_) => ReportFile::default(),
        };
        Self { dir: dir.to_owned(), data }
    }

    /// The record of `action`.
    pub fn get(&self, action: &str) -> ActionReport {
        self.data.actions.get(action).cloned().unwrap_or_default()
    }

    /// Changes the record of `action` and writes the file (atomically) before returning.
    pub fn update(&mut self, action: &str, f: impl FnOnce(&mut ActionReport)) {
        let seq = self.data.next_seq;
        let entry =
            self.data.actions.entry(action.to_owned()).or_insert_with(|| ActionReport { seq, ..Default::default() });
        f(entry);
        self.data.next_seq += 1;
        while self.data.actions.len() > KEEP {
            let oldest = self.data.actions.iter().min_by_key(|(_, r)| r.seq).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.data.actions.remove(&k);
            }
        }
        if let Err(e) = self.save() {
            tracing::error!("cannot save {}: {e}", self.dir.join(REPORTED_FILE).display());
        }
    }

    fn save(&self) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let bytes = serde_json::to_vec_pretty(&self.data).expect("serialisable");
        Ok(otter_common::durable::replace(&self.dir.join(REPORTED_FILE), &bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reload_and_keeps_the_newest() {
        let d = tempfile::tempdir().unwrap();
        let mut r = Reported::load(d.path());
        r.update("7", |a| a.downloaded = true);
        assert!(Reported::load(d.path()).get("7").downloaded);
        for i in 0..40 {
            r.update(&format!("a{i}"), |a| a.closed = true);
        }
        let r = Reported::load(d.path());
        assert!(!r.get("7").downloaded, "oldest dropped");
        assert!(r.get("a39").closed);
        fs::write(d.path().join(REPORTED_FILE), "{garbage").unwrap();
        assert!(!Reported::load(d.path()).get("a39").closed);
    }
}
