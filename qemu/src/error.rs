//! The harness's error type.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What went wrong in the harness. A missing host tool is its own variant so the message names
/// the Debian package to install.
#[derive(Debug)]
pub enum Error {
    /// A host program is not installed.
    MissingTool {
        /// The program.
        tool: String,
        /// The Debian package that provides it.
        package: String,
    },
    /// A file the harness needs (firmware, kernel) is not there.
    MissingFile {
        /// The file.
        path: PathBuf,
        /// The Debian package that provides it.
        package: String,
    },
    /// A file operation failed.
    Io {
        /// What was being done, e.g. "read".
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A host command ran but failed.
    Command {
        /// The command line.
        command: String,
        /// How it ended.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// The VM did not power off in time. The console so far is in `console`.
    Timeout {
        /// The limit that was hit.
        after: Duration,
        /// The serial console up to the timeout.
        console: String,
    },
    /// The disk image is not what the harness expects (partition table, sizes).
    BadImage {
        /// The image.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    pub(crate) fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        Error::Io { action, path: path.to_path_buf(), source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::MissingTool { tool, package } => {
                write!(f, "{tool} not found: install the Debian package {package} (tests/install-deps does)")
            }
            Error::MissingFile { path, package } => write!(
                f,
                "{} not found: install the Debian package {package} (tests/install-deps does)",
                path.display()
            ),
            Error::Io { action, path, source } => write!(f, "failed to {action} {}: {source}", path.display()),
            Error::Command { command, status, stderr } => write!(f, "`{command}` failed ({status}): {stderr}"),
            Error::Timeout { after, console } => {
                let tail: Vec<&str> = console.lines().rev().take(30).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                write!(f, "the VM did not power off within {after:?}; last console lines:\n{}", tail.join("\n"))
            }
            Error::BadImage { path, reason } => {
                write!(f, "unexpected disk image {}: {reason}", path.display())
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
