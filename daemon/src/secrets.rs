//! The server's credentials stay secret: a file that holds a token (a configuration file with `server.token`, or
//! the `server.token_file`) must be readable by its owner only, and the owner must be root or the daemon's own
//! user. Otherwise any local user could read a token (a gateway token is tenant-wide) or, owning the file, swap
//! it. Checked by `otterd --check-config` and at every start, before anything talks to the server.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::{ServerAuth, Settings};

/// Permission bits a file holding a secret may not have: any access by group or others.
const NOT_OWNER_ONLY: u32 = 0o077;

/// A file holding a token that others can read or change.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// Group or others may access the file.
    #[error("{path} holds the server token but its mode {mode:04o} lets group/other access it; chmod 600 it")]
    OpenToOthers {
        /// The configuration or token file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file belongs to an unprivileged user, who can read it whatever its mode.
    #[error("{path} holds the server token but is owned by uid {uid}; it must belong to root")]
    ForeignOwner {
        /// The configuration or token file.
        path: PathBuf,
        /// Its owner.
        uid: u32,
    },
    /// The file cannot be inspected.
    #[error("cannot inspect {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Something about the credentials that is allowed but unwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretsWarning {
    /// A token is sent over plain `http://`: anyone on the path can read and reuse it.
    TokenOverPlainHttp {
        /// The server URL (it carries no credentials: those go in the header).
        url: String,
    },
}

impl std::fmt::Display for SecretsWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretsWarning::TokenOverPlainHttp { url } => write!(
                f,
                "the server token is sent over plain http to {}: anyone on the network path can read and reuse it; \
                 use https",
                otter_common::redact::url(url)
            ),
        }
    }
}

/// Checks every file in `settings.files` that sets `server.token`, and every `server.token_file` they name
/// (resolved under `settings.root`), whether or not the server is enabled: a token on disk is a secret either way.
/// Returns the warnings to show; an error names the first file that others can read.
pub fn check(settings: &Settings) -> Result<Vec<SecretsWarning>, SecretsError> {
    let me = nix::unistd::geteuid().as_raw();
    for file in &settings.files {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        // It parsed when the configuration was loaded; a file that no longer does holds no token we know of.
        let Ok(value) = text.parse::<toml::Table>() else { continue };
        let Some(server) = value.get("server").and_then(toml::Value::as_table) else { continue };
        if server.get("token").is_some() {
            owner_only(file, me)?;
        }
        if let Some(token_file) = server.get("token_file").and_then(toml::Value::as_str) {
            let path = settings.root.join(token_file.trim_start_matches('/'));
            owner_only(&path, me)?;
        }
    }
    let mut warnings = Vec::new();
    if let Some(server) = &settings.server
        && matches!(server.auth, ServerAuth::TargetToken(_) | ServerAuth::GatewayToken(_))
        && server.url.starts_with("http://")
    {
        warnings.push(SecretsWarning::TokenOverPlainHttp { url: server.url.clone() });
    }
    Ok(warnings)
}

/// `path` (followed if a symlink: what counts is who can read the token) is owner-only and owned by root or `me`.
fn owner_only(path: &Path, me: u32) -> Result<(), SecretsError> {
    let meta = std::fs::metadata(path).map_err(|source| SecretsError::Io { path: path.to_owned(), source })?;
    if meta.uid() != 0 && meta.uid() != me {
        return Err(SecretsError::ForeignOwner { path: path.to_owned(), uid: meta.uid() });
    }
    let mode = meta.mode() & 0o7777;
    if mode & NOT_OWNER_ONLY != 0 {
        return Err(SecretsError::OpenToOthers { path: path.to_owned(), mode });
    }
    Ok(())
}
