//! Credentials: operator API tokens with roles, device target tokens, provisioning tokens.
//!
//! Every secret is 32 random bytes shown once (hex, with a prefix saying what it is) and stored only as its
//! SHA-256, so a copy of the database gives no working credential. Lookups are by hash; comparisons of secrets
//! the server holds itself (the gateway token) are constant-time.

use sha2::{Digest, Sha256};

/// What an operator token may do. Roles are sets, not a ladder: an approver approves but does not start rollouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Reads, publishes artifacts, manages devices, creates and steers rollouts.
    Operator,
    /// Reads and approves rollout groups.
    Approver,
    /// Everything, including API tokens and provisioning tokens.
    Admin,
}

/// One thing an API call does, checked against the caller's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read any resource.
    Read,
    /// Upload artifacts; create, pause, resume and cancel rollouts; edit devices and their tokens.
    Operate,
    /// Approve a rollout group.
    Approve,
    /// Manage API tokens and provisioning tokens.
    Administer,
}

impl Role {
    /// Whether this role may do `p`.
    pub fn allows(self, p: Permission) -> bool {
        matches!(
            (self, p),
            (_, Permission::Read)
                | (Role::Admin, _)
                | (Role::Operator, Permission::Operate)
                | (Role::Approver, Permission::Approve)
        )
    }

    /// The role's name as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }

    /// Parses an API role name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "viewer" => Role::Viewer,
            "operator" => Role::Operator,
            "approver" => Role::Approver,
            "admin" => Role::Admin,
            _ => return None,
        })
    }
}

/// A new secret: `prefix` + 64 hex digits. The prefix says what it is when one turns up in a log or a paste.
pub fn new_secret(prefix: &str) -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the kernel's random source is unavailable");
    format!("{prefix}{}", hex::encode(b))
}

/// The stored form of a secret.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Constant-time equality of two secrets (lengths are not secret).
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Prefixes of the secrets this server issues.
pub mod prefix {
    /// An operator's API token.
    pub const API: &str = "otk_";
    /// A device's target token.
    pub const TARGET: &str = "ott_";
    /// A fleet provisioning token.
    pub const PROVISIONING: &str = "otp_";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_sets() {
        assert!(Role::Viewer.allows(Permission::Read));
        assert!(!Role::Viewer.allows(Permission::Operate));
        assert!(Role::Operator.allows(Permission::Operate));
        assert!(!Role::Operator.allows(Permission::Approve));
        assert!(Role::Approver.allows(Permission::Approve));
        assert!(!Role::Approver.allows(Permission::Operate));
        assert!(!Role::Operator.allows(Permission::Administer));
        assert!(Role::Admin.allows(Permission::Administer) && Role::Admin.allows(Permission::Approve));
        for r in [Role::Viewer, Role::Operator, Role::Approver, Role::Admin] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn secrets_are_random_and_stored_hashed() {
        let a = new_secret(prefix::TARGET);
        let b = new_secret(prefix::TARGET);
        assert_ne!(a, b);
        assert!(a.starts_with("ott_") && a.len() == 4 + 64);
        assert_eq!(secret_hash(&a).len(), 64);
        assert_ne!(secret_hash(&a), secret_hash(&b));
        assert!(same_secret(&a, &a.clone()));
        assert!(!same_secret(&a, &b));
        assert!(!same_secret("abc", "abcd"));
    }
}
