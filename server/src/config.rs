//! Settings of one `otter-server` instance, from the command line (and the environment, for secrets).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What `otter-server serve` runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data directory: the SQLite database (unless `database` says otherwise) and the artifact store.
    pub data: PathBuf,
    /// `sqlite://PATH` or `postgres://…`; `None` = `sqlite://DATA/otter.db`.
    pub database: Option<String>,
    /// Where artifacts are stored (content-addressed); `None` = `DATA/artifacts`. Instances sharing one PostgreSQL
    /// database must share this directory too (a network filesystem), see docs/server.md.
    pub artifacts: Option<PathBuf>,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The URL devices reach this server at (links in DDI answers are built from it), without a trailing slash.
    pub public_url: String,
    /// The DDI tenant in paths (`/{tenant}/controller/v1/…`).
    pub tenant: String,
    /// Public keys artifacts must be signed with: a key file or a directory of `*.pub` files.
    pub keyring: PathBuf,
    /// The poll interval devices are told to keep.
    pub poll: Duration,
    /// The poll interval for devices in a running fast release.
    pub fast_poll: Duration,
    /// How long a download link stays valid.
    pub link_ttl: Duration,
    /// How precise a device's `last_seen_ms` is kept: a request writes it only when the stored time is at least
    /// this old (default 300 s, the default poll interval). Writing on every poll would make the fleet's polls a
    /// stream of writes (100,000 devices every 30 s: 3,333 row updates a second), most of the server's work.
    pub seen_resolution: Duration,
    /// Whether an unknown controller id with a valid gateway token is registered on its first poll.
    pub auto_register: bool,
    /// The tenant-wide gateway token (DDI `GatewayToken`), if gateways may authenticate that way.
    pub gateway_token: Option<String>,
    /// Largest artifact upload accepted, in bytes.
    pub max_upload: u64,
    /// Device API requests worked on at once; more are answered `503` with `Retry-After` instead of queueing.
    pub max_device_requests: usize,
    /// Trust `X-Client-Cert-CN` (set by a TLS-terminating reverse proxy that checked the client certificate) as the
    /// device's identity. Only for a server reachable solely through that proxy.
    pub trust_proxy_client_cert: bool,
}

impl Config {
    /// Defaults for a data directory (listening on 127.0.0.1:8080).
    pub fn new(data: PathBuf, keyring: PathBuf) -> Self {
        Self {
            data,
            database: None,
            artifacts: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: "http://127.0.0.1:8080".into(),
            tenant: "DEFAULT".into(),
            keyring,
            poll: Duration::from_secs(300),
            fast_poll: Duration::from_secs(10),
            link_ttl: Duration::from_secs(900),
            seen_resolution: Duration::from_secs(300),
            auto_register: false,
            gateway_token: None,
            max_upload: 8 << 30,
            trust_proxy_client_cert: false,
            max_device_requests: 1024,
        }
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        self.database.clone().unwrap_or_else(|| format!("sqlite://{}", self.data.join("otter.db").display()))
    }

    /// The artifact directory in effect.
    pub fn artifacts_dir(&self) -> PathBuf {
        self.artifacts.clone().unwrap_or_else(|| self.data.join("artifacts"))
    }
}

/// Formats a poll interval as DDI wants it (`HH:MM:SS`).
pub fn ddi_sleep(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}:{:02}", (s / 3600).min(99), s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_is_hh_mm_ss() {
        assert_eq!(ddi_sleep(Duration::from_secs(300)), "00:05:00");
        assert_eq!(ddi_sleep(Duration::from_secs(3661)), "01:01:01");
        assert_eq!(ddi_sleep(Duration::from_secs(10)), "00:00:10");
    }
}
