//! The few mechanisms every otter crate shares, each written once:
//!
//! - [`durable`]: replacing a file so a power cut leaves the old or the new one, never a mix, and nothing planted
//!   next to it (a link at a temp name) is written through.
//! - [`http`] (feature `http`): the blocking HTTP/1.1 client of the device with its TLS trust, identity and proxies.
//! - [`redact`]: URLs without their secrets (userinfo, pre-signed query strings) for logs, status and history.
//! - [`error_chain`]: an error and its sources on one line.

pub mod durable;
#[cfg(feature = "http")]
pub mod http;
pub mod redact;

/// An error and all its causes on one line, `outer: inner: innermost` (HTTP and TLS errors keep the useful part in causes).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
