//! Short-lived signed download links: the pre-signed URL model.
//!
//! A link names the artifact (by sha256), the device it was issued to and an expiry, and carries an HMAC-SHA256
//! over those with a key every instance reads from the database. The download needs no other credential, so no
//! device token has to travel to wherever artifacts are served from, and a leaked link is worth one artifact for a
//! few minutes. A device whose link expired mid-download asks `deploymentBase` again and gets a fresh one.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A link's parts, as they appear in its query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The artifact's sha256 (hex).
    pub sha256: String,
    /// The controller id of the device it was issued to (for the audit trail and the logs).
    pub device: String,
    /// Expiry, seconds since the Unix epoch.
    pub expires: u64,
}

/// Why a link was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The signature does not match (edited or forged).
    #[error("download link signature does not match")]
    BadSignature,
    /// The link is past its expiry.
    #[error("download link expired")]
    Expired,
    /// A query parameter is missing or malformed.
    #[error("download link is malformed")]
    Malformed,
}

/// Signs and checks links with one key.
#[derive(Clone)]
pub struct LinkSigner {
    key: Vec<u8>,
}

impl LinkSigner {
    /// A signer with `key` (at least 32 bytes).
    pub fn new(key: Vec<u8>) -> Self {
        assert!(key.len() >= 32, "link key too short");
        Self { key }
    }

    fn mac(&self, g: &Grant) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("hmac takes any key length");
        // Length-prefixed so no two different grants serialise to the same bytes.
        for part in [g.sha256.as_bytes(), g.device.as_bytes(), &g.expires.to_be_bytes()] {
            m.update(&(part.len() as u64).to_be_bytes());
            m.update(part);
        }
        m
    }

    /// The query string of a link for `g` (without the leading `?`).
    pub fn query(&self, g: &Grant) -> String {
        let sig = hex::encode(self.mac(g).finalize().into_bytes());
        format!("device={}&expires={}&sig={sig}", url_escape(&g.device), g.expires)
    }

    /// Checks the query of a download of artifact `sha256` at time `now` (seconds).
    pub fn check(&self, sha256: &str, query: &str, now: u64) -> Result<Grant, LinkError> {
        let (mut device, mut expires, mut sig) = (None, None, None);
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').ok_or(LinkError::Malformed)?;
            match k {
                "device" => device = Some(url_unescape(v).ok_or(LinkError::Malformed)?),
                "expires" => expires = Some(v.parse::<u64>().map_err(|_| LinkError::Malformed)?),
                "sig" => sig = Some(hex::decode(v).map_err(|_| LinkError::Malformed)?),
                _ => {}
            }
        }
        let g = Grant {
            sha256: sha256.to_owned(),
            device: device.ok_or(LinkError::Malformed)?,
            expires: expires.ok_or(LinkError::Malformed)?,
        };
        // Signature first: an expired forgery is a forgery.
        self.mac(&g).verify_slice(&sig.ok_or(LinkError::Malformed)?).map_err(|_| LinkError::BadSignature)?;
        if now > g.expires {
            return Err(LinkError::Expired);
        }
        Ok(g)
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reverses [`url_escape`] (and any other percent-encoding); `None` for a broken escape or non-UTF-8.
pub fn url_unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant {
        Grant { sha256: "ab".repeat(32), device: "gw 1/ä".into(), expires: 1000 }
    }

    #[test]
    fn a_signed_link_checks_until_it_expires() {
        let s = LinkSigner::new(vec![7; 32]);
        let q = s.query(&grant());
        assert_eq!(s.check(&grant().sha256, &q, 999), Ok(grant()));
        assert_eq!(s.check(&grant().sha256, &q, 1000), Ok(grant()));
        assert_eq!(s.check(&grant().sha256, &q, 1001), Err(LinkError::Expired));
    }

    #[test]
    fn an_edited_link_is_refused() {
        let s = LinkSigner::new(vec![7; 32]);
        let q = s.query(&grant());
        // Another artifact, a later expiry, another device, another key.
        assert_eq!(s.check(&"cd".repeat(32), &q, 0), Err(LinkError::BadSignature));
        assert_eq!(
            s.check(&grant().sha256, &q.replace("expires=1000", "expires=9999"), 0),
            Err(LinkError::BadSignature)
        );
        assert_eq!(s.check(&grant().sha256, &q.replace("device=gw", "device=gx"), 0), Err(LinkError::BadSignature));
        assert_eq!(LinkSigner::new(vec![8; 32]).check(&grant().sha256, &q, 0), Err(LinkError::BadSignature));
        assert_eq!(s.check(&grant().sha256, "device=x&expires=1", 0), Err(LinkError::Malformed));
        assert_eq!(s.check(&grant().sha256, "garbage", 0), Err(LinkError::Malformed));
    }

    #[test]
    fn escaping_round_trips() {
        for s in ["plain", "a b/c?d&e=f%", "ümlaut"] {
            assert_eq!(url_unescape(&url_escape(s)).as_deref(), Some(s));
        }
        assert_eq!(url_unescape("%zz"), None);
        assert_eq!(url_unescape("%4"), None);
    }
}
