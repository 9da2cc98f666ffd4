//! Ed25519 keys, key files, the keyring, and the signature block.

use std::fmt;
use std::fs;
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::Digest as _;

use crate::error::ArtifactError;

const SECRET_TAG: &str = "otter-ed25519-secret";
const PUBLIC_TAG: &str = "otter-ed25519-public";
/// First line of a signature block.
pub const SIGNATURE_HEADER: &str = "otter-signatures 1";
/// Most signatures one block may carry.
pub const MAX_SIGNATURES: usize = 16;

/// Identifies a public key: the first 8 bytes of the SHA-256 of its 32 raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// The id of a public key.
    pub fn of(key: &VerifyingKey) -> Self {
        let h = sha2::Sha256::digest(key.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&h[..8]);
        Self(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

fn bad_key(path: &Path, reason: impl Into<String>) -> ArtifactError {
    ArtifactError::BadKeyFile { path: path.display().to_string(), reason: reason.into() }
}

fn parse_key_line(path: &Path, text: &str, tag: &str) -> Result<[u8; 32], ArtifactError> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| bad_key(path, "empty file"))?;
    let (t, hexkey) = line.split_once(' ').ok_or_else(|| bad_key(path, format!("expected \"{tag} <hex>\"")))?;
    if t != tag {
        return Err(bad_key(path, format!("expected a {tag} key, found {t:?}")));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hexkey.trim(), &mut out).map_err(|_| bad_key(path, "key is not 64 hex digits"))?;
    Ok(out)
}

/// Generates a new signing key from the operating system's random source.
#[cfg(any(test, feature = "build-host"))]
pub fn generate() -> Result<SigningKey, ArtifactError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| ArtifactError::Io {
        context: "reading random bytes for a new key".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Writes `NAME.key` (mode 0600, never overwriting) and `NAME.pub` for `key`, where `base` is `PATH/NAME`. The
/// public key goes through [`otter_common::durable::replace`]: a link planted at `NAME.pub` is replaced, never
/// written through.
#[cfg(any(test, feature = "build-host"))]
pub fn write_keypair(key: &SigningKey, base: &Path) -> Result<(), ArtifactError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let with_ext = |ext: &str| {
        let mut p = base.as_os_str().to_owned();
        p.push(ext);
        std::path::PathBuf::from(p)
    };
    let secret = with_ext(".key");
    let public = with_ext(".pub");
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |e| ArtifactError::Io { context: format!("writing {p}"), source: e }
    };
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&secret).map_err(io(&secret))?;
    writeln!(f, "{SECRET_TAG} {}", hex::encode(key.to_bytes())).map_err(io(&secret))?;
    f.sync_all().map_err(io(&secret))?;
    let vk = key.verifying_key();
    let text = format!("{PUBLIC_TAG} {}\n# key id {}\n", hex::encode(vk.as_bytes()), KeyId::of(&vk));
    otter_common::durable::replace(&public, text.as_bytes()).map_err(|e| io(&public)(e.into()))?;
    Ok(())
}

/// Reads a signing key written by [`write_keypair`].
pub fn read_signing_key(path: &Path) -> Result<SigningKey, ArtifactError> {
    let text = fs::read_to_string(path).map_err(|e| bad_key(path, e.to_string()))?;
    Ok(SigningKey::from_bytes(&parse_key_line(path, &text, SECRET_TAG)?))
}

/// Reads a public key written by [`write_keypair`].
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, ArtifactError> {
    let text = fs::read_to_string(path).map_err(|e| bad_key(path, e.to_string()))?;
    let bytes = parse_key_line(path, &text, PUBLIC_TAG)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| bad_key(path, "not a valid ed25519 public key"))
}

/// The set of public keys an artifact may be signed with.
#[derive(Clone, Default)]
pub struct Keyring {
    keys: Vec<(KeyId, VerifyingKey)>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.keys.iter().map(|(id, _)| id)).finish()
    }
}

impl Keyring {
    /// An empty keyring.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key (a key already present is not added twice).
    pub fn add(&mut self, key: VerifyingKey) {
        let id = KeyId::of(&key);
        if !self.keys.iter().any(|(k, _)| *k == id) {
            self.keys.push((id, key));
        }
    }

    /// Loads one public key file.
    pub fn from_file(path: &Path) -> Result<Self, ArtifactError> {
        let mut k = Self::new();
        k.add(read_public_key(path)?);
        Ok(k)
    }

    /// Loads every `*.pub` file of a directory, in name order. An empty directory is an error: a device with no
    /// trusted key could never install anything, which is a configuration mistake worth failing loudly on.
    pub fn from_dir(dir: &Path) -> Result<Self, ArtifactError> {
        let entries = fs::read_dir(dir).map_err(|e| bad_key(dir, e.to_string()))?;
        let mut paths: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "pub"))
            .collect();
        paths.sort();
        let mut k = Self::new();
        for p in paths {
            k.add(read_public_key(&p)?);
        }
        if k.keys.is_empty() {
            return Err(bad_key(dir, "no *.pub keys in the keyring directory"));
        }
        Ok(k)
    }

    /// Key ids in the keyring.
    pub fn ids(&self) -> Vec<KeyId> {
        self.keys.iter().map(|(id, _)| *id).collect()
    }

    fn get(&self, id: &KeyId) -> Option<&VerifyingKey> {
        self.keys.iter().find(|(k, _)| k == id).map(|(_, v)| v)
    }

    /// Checks a signature block over `manifest`. Succeeds when at least one signature is by a key in the keyring
    /// and every signature by a key in the keyring verifies; signatures by other keys are ignored, which is what
    /// lets keys rotate (sign with old and new, then retire the old one from devices).
    pub fn verify(&self, manifest: &[u8], block: &SignatureBlock) -> Result<KeyId, ArtifactError> {
        if block.signatures.is_empty() {
            return Err(ArtifactError::NotSigned);
        }
        let mut trusted = None;
        for (id, sig) in &block.signatures {
            if let Some(key) = self.get(id) {
                key.verify_strict(manifest, sig).map_err(|_| ArtifactError::BadSignature { key_id: id.to_string() })?;
                trusted.get_or_insert(*id);
            }
        }
        trusted.ok_or_else(|| {
            let list = |ids: Vec<String>| {
                if ids.is_empty() { "no keys".to_owned() } else { ids.join(", ") }
            };
            ArtifactError::UnknownKey {
                key_ids: list(block.signatures.iter().map(|(id, _)| id.to_string()).collect()),
                keyring: list(self.ids().iter().map(ToString::to_string).collect()),
            }
        })
    }
}

/// The second tar entry: signatures over the exact manifest bytes, one per line.
///
/// ```text
/// otter-signatures 1
/// ed25519 <key id, 16 hex digits> <signature, 128 hex digits>
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignatureBlock {
    /// The signatures with the id of the key that made each.
    pub signatures: Vec<(KeyId, Signature)>,
}

impl SignatureBlock {
    /// Parses a signature block. Strict: any line that is not understood is an error.
    pub fn parse(bytes: &[u8]) -> Result<Self, ArtifactError> {
        let bad = |line: usize, reason: &str| ArtifactError::MalformedSignatureBlock { line, reason: reason.into() };
        let text = std::str::from_utf8(bytes).map_err(|_| bad(1, "not UTF-8"))?;
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, SIGNATURE_HEADER)) => {}
            _ => return Err(bad(1, "missing \"otter-signatures 1\" header")),
        }
        let mut signatures = Vec::new();
        for (i, line) in lines {
            let n = i + 1;
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split(' ').collect();
            let [alg, id, sig] = fields[..] else {
                return Err(bad(n, "expected 3 fields"));
            };
            if alg != "ed25519" {
                return Err(bad(n, "unknown signature algorithm"));
            }
            let mut kid = [0u8; 8];
            hex::decode_to_slice(id, &mut kid).map_err(|_| bad(n, "key id is not 16 hex digits"))?;
            let mut s = [0u8; 64];
            hex::decode_to_slice(sig, &mut s).map_err(|_| bad(n, "signature is not 128 hex digits"))?;
            if signatures.len() == MAX_SIGNATURES {
                return Err(bad(n, "too many signatures"));
            }
            signatures.push((KeyId(kid), Signature::from_bytes(&s)));
        }
        Ok(Self { signatures })
    }

    /// Serialises the block.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{SIGNATURE_HEADER}\n");
        for (id, sig) in &self.signatures {
            out.push_str(&format!("ed25519 {id} {}\n", hex::encode(sig.to_bytes())));
        }
        out.into_bytes()
    }

    /// Adds a signature by `key` over `manifest`, replacing an earlier one by the same key.
    pub fn sign(&mut self, key: &SigningKey, manifest: &[u8]) {
        let id = KeyId::of(&key.verifying_key());
        self.signatures.retain(|(k, _)| *k != id);
        self.signatures.push((id, key.sign(manifest)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        let mut block = SignatureBlock::default();
        block.sign(&a, b"manifest");
        block.sign(&b, b"manifest");
        let block = SignatureBlock::parse(&block.to_bytes()).unwrap();
        let mut ring = Keyring::new();
        ring.add(b.verifying_key());
        assert_eq!(ring.verify(b"manifest", &block).unwrap(), KeyId::of(&b.verifying_key()));
        assert!(matches!(ring.verify(b"manifesT", &block), Err(ArtifactError::BadSignature { .. })));
        let mut other = Keyring::new();
        other.add(generate().unwrap().verifying_key());
        assert!(matches!(other.verify(b"manifest", &block), Err(ArtifactError::UnknownKey { .. })));
        assert!(matches!(ring.verify(b"manifest", &SignatureBlock::default()), Err(ArtifactError::NotSigned)));
    }

    #[test]
    fn key_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = generate().unwrap();
        write_keypair(&key, &dir.path().join("dev")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("dev.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read_signing_key(&dir.path().join("dev.key")).unwrap().to_bytes(), key.to_bytes());
        let ring = Keyring::from_dir(dir.path()).unwrap();
        assert_eq!(ring.ids(), vec![KeyId::of(&key.verifying_key())]);
        // Never overwrite an existing secret key.
        assert!(write_keypair(&key, &dir.path().join("dev")).is_err());
        // A secret key is not a public key.
        assert!(matches!(read_public_key(&dir.path().join("dev.key")), Err(ArtifactError::BadKeyFile { .. })));
    }

    #[test]
    fn malformed_blocks() {
        for text in
            ["", "otter-signatures 2\n", "otter-signatures 1\nrsa 00 00\n", "otter-signatures 1\ned25519 zz 00\n"]
        {
            assert!(matches!(
                SignatureBlock::parse(text.as_bytes()),
                Err(ArtifactError::MalformedSignatureBlock { .. })
            ));
        }
    }
}
