//! GRUB environment block (`grubenv`) codec and the GRUB [`BootBackend`].
//!
//! The block is a file of (normally) 1024 bytes: `# GRUB Environment Block\n`, then
//! `name=value\n` lines, the rest padded with `#`. In values a backslash escapes the next byte;
//! `grub-editenv` writes `\` as `\\` and a newline as `\` followed by the newline. Lines starting
//! with `#` are comments (Debian's `grub-editenv` adds a warning line).

use std::path::{Path, PathBuf};

use crate::fsutil::{self, ReplaceStop, io_err};
use crate::scheme::{EnvVars, GrubScheme, VarScheme};
use crate::vars::VarList;
use crate::{BootBackend, BootError, Slot, SlotState};

/// Size of a GRUB environment block as `grub-editenv create` makes it.
pub const GRUBENV_SIZE: usize = 1024;

/// The header every block starts with.
pub const GRUBENV_SIGNATURE: &[u8] = b"# GRUB Environment Block\n";

/// Errors of the grubenv codec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrubEnvError {
    /// The block does not start with `# GRUB Environment Block\n`.
    #[error("missing \"# GRUB Environment Block\" header")]
    Signature,
    /// The variables do not fit into the block.
    #[error("variables need {needed} bytes but the block has {size}")]
    TooLarge {
        /// Bytes needed.
        needed: usize,
        /// Block size.
        size: usize,
    },
    /// The name is empty, starts with `#`, or contains `=`, a newline or NUL.
    #[error("invalid variable name {0:?}")]
    InvalidName(String),
    /// The value contains NUL.
    #[error("value of {0:?} contains a NUL byte")]
    InvalidValue(String),
}

/// A GRUB environment block: ordered variables plus the block size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrubEnv {
    vars: VarList,
    size: usize,
}

impl Default for GrubEnv {
    fn default() -> Self {
        Self { vars: VarList::default(), size: GRUBENV_SIZE }
    }
}

impl GrubEnv {
    /// An empty 1024-byte block.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes a block. Its length becomes the size [`GrubEnv::to_bytes`] writes back (GRUB's
    /// `save_env` rewrites the file's blocks in place, so the size must not change).
    /// Comment lines, lines without `=` and an unterminated last line are skipped, as GRUB does.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, GrubEnvError> {
        let body = bytes.strip_prefix(GRUBENV_SIGNATURE).ok_or(GrubEnvError::Signature)?;
        let mut vars = VarList::default();
        let mut rest = body;
        while !rest.is_empty() {
            // A line ends at the first newline not escaped by a backslash.
            let mut end = None;
            let mut i = 0;
            while i < rest.len() {
                match rest[i] {
                    b'\\' => i += 2,
                    b'\n' => {
                        end = Some(i);
                        break;
                    }
                    _ => i += 1,
                }
            }
            let Some(end) = end else { break };
            let line = &rest[..end];
            rest = &rest[end + 1..];
            if line.first() == Some(&b'#') {
                continue;
            }
            let Some(eq) = line.iter().position(|&b| b == b'=') else {
                continue;
            };
            vars.set(&line[..eq], &unescape(&line[eq + 1..]));
        }
        Ok(Self { vars, size: bytes.len() })
    }

    /// Encodes the block at its size (1024 bytes unless decoded from a block of another size).
    pub fn to_bytes(&self) -> Result<Vec<u8>, GrubEnvError> {
        let mut out = GRUBENV_SIGNATURE.to_vec();
        for (name, value) in self.vars.iter() {
            out.extend_from_slice(name);
            out.push(b'=');
            for &b in value {
                if b == b'\\' || b == b'\n' {
                    out.push(b'\\');
                }
                out.push(b);
            }
            out.push(b'\n');
        }
        if out.len() > self.size {
            return Err(GrubEnvError::TooLarge { needed: out.len(), size: self.size });
        }
        out.resize(self.size, b'#');
        Ok(out)
    }

    /// The block size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The value of `name` if set and valid UTF-8.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name.as_bytes()).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Sets `name` to `value` (in memory); an existing variable keeps its position.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), GrubEnvError> {
        if name.is_empty() || name.starts_with('#') || name.contains(['=', '\n', '\0']) {
            return Err(GrubEnvError::InvalidName(name.to_owned()));
        }
        if value.contains('\0') {
            return Err(GrubEnvError::InvalidValue(name.to_owned()));
        }
        self.vars.set(name.as_bytes(), value.as_bytes());
        Ok(())
    }

    /// Removes `name` (in memory); returns whether it was set.
    pub fn remove(&mut self, name: &str) -> bool {
        self.vars.remove(name.as_bytes())
    }

    /// The variables in order (values unescaped).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.vars.iter()
    }

    /// Number of variables.
    pub fn len(&self) -> usize {
        self.vars.len()
    }

    /// Whether there are no variables.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn unescape(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut it = value.iter();
    while let Some(&b) = it.next() {
        if b == b'\\' {
            if let Some(&next) = it.next() {
                out.push(next);
            }
        } else {
            out.push(b);
        }
    }
    out
}

impl EnvVars for GrubEnv {
    fn var(&self, name: &str) -> Option<&str> {
        self.get(name)
    }

    fn set_var(&mut self, name: &str, value: &str) -> Result<(), BootError> {
        self.set(name, value).map_err(|_| BootError::InvalidVariable {
            variable: name.to_owned(),
            reason: "not storable in a grub environment block",
        })
    }

    fn remove_var(&mut self, name: &str) {
        self.remove(name);
    }
}

/// The GRUB environment block as a [`BootBackend`], with RAUC's `ORDER`/`x_OK`/`x_TRY` scheme
/// ([`GrubScheme`]): a trial gets exactly one boot.
///
/// [`BootBackend::store`] replaces the file durably ([`otter_common::durable`]: exclusive temp
/// file, fsync, rename, fsync file and dir). GRUB finds the file through the filesystem at every
/// boot, so a new inode is fine. A symlinked grubenv is written through: the file it points to is
/// replaced and the link stays. A block
/// without the header is an error and is never overwritten.
#[derive(Debug)]
pub struct GrubBackend {
    path: PathBuf,
    env: GrubEnv,
    dirty: bool,
}

impl GrubBackend {
    /// Opens and reads the grubenv file at `path`.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, BootError> {
        let path = path.into();
        let env = read_grubenv(&path)?;
        Ok(Self { path, env, dirty: false })
    }

    /// The in-memory environment (including unstored changes).
    pub fn env(&self) -> &GrubEnv {
        &self.env
    }

    /// The grubenv file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn apply(
        &mut self,
        f: impl FnOnce(&GrubScheme, &mut dyn EnvVars) -> Result<(), BootError>,
    ) -> Result<(), BootError> {
        let before = self.env.clone();
        let result = f(&GrubScheme, &mut self.env);
        if result.is_err() {
            // Keep the in-memory view consistent: a failed transition changes nothing.
            self.env = before;
        } else {
            self.dirty |= self.env != before;
        }
        result
    }
}

fn read_grubenv(path: &Path) -> Result<GrubEnv, BootError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    GrubEnv::from_bytes(&bytes).map_err(|reason| BootError::GrubEnv { path: path.to_owned(), reason })
}

impl BootBackend for GrubBackend {
    fn slot_state(&self, slot: Slot) -> SlotState {
        GrubScheme.state(&self.env, slot)
    }

    fn primary(&self) -> Option<Slot> {
        GrubScheme.primary(&self.env)
    }

    fn set_try_next(&mut self, slot: Slot) -> Result<(), BootError> {
        self.apply(|s, e| s.try_next(e, slot))
    }

    fn mark_good(&mut self, slot: Slot) -> Result<(), BootError> {
        self.apply(|s, e| s.mark_good(e, slot))
    }

    fn mark_bad(&mut self, slot: Slot) -> Result<(), BootError> {
        self.apply(|s, e| s.mark_bad(e, slot))
    }

    fn store(&mut self) -> Result<(), BootError> {
        if !self.dirty {
            return Ok(());
        }
        let bytes = self.env.to_bytes().map_err(|reason| BootError::GrubEnv { path: self.path.clone(), reason })?;
        fsutil::replace_file(&self.path, &bytes, ReplaceStop::Never)?;
        self.dirty = false;
        Ok(())
    }

    fn reload(&mut self) -> Result<(), BootError> {
        self.env = read_grubenv(&self.path)?;
        self.dirty = false;
        Ok(())
    }

    fn security_version(&self) -> Option<u64> {
        crate::security_version_of(&self.env)
    }

    fn raise_security_version(&mut self, version: u64) -> Result<(), BootError> {
        self.apply(|_, e| crate::raise_security_version_in(e, version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout() {
        let mut env = GrubEnv::new();
        env.set("ORDER", "A B").unwrap();
        env.set("x", "a\\b\nc").unwrap();
        let bytes = env.to_bytes().unwrap();
        assert_eq!(bytes.len(), GRUBENV_SIZE);
        let text = b"# GRUB Environment Block\nORDER=A B\nx=a\\\\b\\\nc\n#";
        assert_eq!(&bytes[..text.len()], text);
        assert!(bytes[text.len()..].iter().all(|&b| b == b'#'));
        assert_eq!(GrubEnv::from_bytes(&bytes).unwrap(), env);
        assert_eq!(env.get("x"), Some("a\\b\nc"));
    }

    #[test]
    fn decode_edge_cases() {
        let block = b"# GRUB Environment Block\n# comment=x\nnoeq\na=1\n=empty\nb=2\\\n3\nc=unterminated";
        let env = GrubEnv::from_bytes(block).unwrap();
        assert_eq!(env.get("a"), Some("1"));
        assert_eq!(env.get("b"), Some("2\n3"));
        assert_eq!(env.get("c"), None);
        assert_eq!(env.get("# comment"), None);
        assert_eq!(env.size(), block.len());
        assert_eq!(GrubEnv::from_bytes(b"# GRUB Environment Blok\n"), Err(GrubEnvError::Signature));
        assert_eq!(GrubEnv::from_bytes(b""), Err(GrubEnvError::Signature));
    }

    #[test]
    fn oversize_is_rejected() {
        let mut env = GrubEnv::new();
        env.set("big", &"x".repeat(GRUBENV_SIZE)).unwrap();
        assert!(matches!(env.to_bytes(), Err(GrubEnvError::TooLarge { size: 1024, .. })));
        // Exactly full is fine.
        let mut env = GrubEnv::new();
        let fill = GRUBENV_SIZE - GRUBENV_SIGNATURE.len() - "k=\n".len();
        env.set("k", &"v".repeat(fill)).unwrap();
        let bytes = env.to_bytes().unwrap();
        assert_eq!(bytes.len(), GRUBENV_SIZE);
        assert_eq!(*bytes.last().unwrap(), b'\n');
        assert_eq!(GrubEnv::from_bytes(&bytes).unwrap(), env);
    }

    #[test]
    fn names_are_validated() {
        let mut env = GrubEnv::new();
        for bad in ["", "a=b", "#x", "a\nb", "a\0"] {
            assert!(env.set(bad, "v").is_err(), "{bad:?}");
        }
        assert!(env.set("a", "v\0").is_err());
    }

    fn arb_env() -> impl Strategy<Value = GrubEnv> {
        let name = "[A-Za-z_][A-Za-z0-9_ .-]{0,8}";
        let value =
            proptest::collection::vec(1u8..=255, 0..30).prop_map(|v| String::from_utf8_lossy(&v).replace('\0', ""));
        proptest::collection::vec((name, value), 0..8).prop_map(|pairs| {
            let mut env = GrubEnv::new();
            for (n, v) in pairs {
                env.set(&n, &v).unwrap();
            }
            env
        })
    }

    proptest! {
        #[test]
        fn round_trips(env in arb_env()) {
            if let Ok(bytes) = env.to_bytes() {
                prop_assert_eq!(bytes.len(), GRUBENV_SIZE);
                prop_assert_eq!(GrubEnv::from_bytes(&bytes).unwrap(), env);
            }
        }

        #[test]
        fn decoder_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..1100), with_sig: bool) {
            let mut bytes = if with_sig { GRUBENV_SIGNATURE.to_vec() } else { Vec::new() };
            bytes.extend_from_slice(&tail);
            if let Ok(env) = GrubEnv::from_bytes(&bytes) {
                // Whatever decodes re-encodes (unless it no longer fits) to the same variables.
                if let Ok(again) = env.to_bytes() {
                    let back = GrubEnv::from_bytes(&again).unwrap();
                    prop_assert_eq!(back.iter().collect::<Vec<_>>(), env.iter().collect::<Vec<_>>());
                }
            }
        }
    }
}
