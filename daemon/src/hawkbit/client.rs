//! A blocking DDI client: one method per resource, typed bodies, typed errors. Authentication (TargetToken,
//! GatewayToken, client certificate) and the private CA are applied to every request, including artifact
//! downloads on the server's own origin (see [`DdiClient::download_options`]). URLs in errors are redacted.

use std::time::Duration;

use otter_common::error_chain as chain;
use otter_common::http::{Client, HttpError, Method, Request, Response, Url};
use otter_common::redact;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::model::{CancelActionBase, ConfigData, ConfirmationFeedback, ControllerBase, DeploymentBase, Feedback};
use crate::config::{ServerAuth, ServerSettings};

/// A failed DDI request.
#[derive(Debug, thiserror::Error)]
pub enum DdiError {
    /// The client could not be built (bad CA bundle, client certificate, token or proxy setting).
    #[error("hawkbit client setup: {0}")]
    Setup(String),
    /// No answer (connection refused, timeout, TLS failure).
    #[error("{url}: {message}")]
    Transport {
        /// The URL.
        url: String,
        /// The error chain.
        message: String,
    },
    /// The action is no longer active on the server.
    #[error("{url}: 410 Gone (the action is no longer active)")]
    Gone {
        /// The URL.
        url: String,
    },
    /// An error status.
    #[error("{url}: server answered HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// The body is not the expected JSON.
    #[error("{url}: malformed answer: {message}")]
    Malformed {
        /// The URL.
        url: String,
        /// The parser's message.
        message: String,
    },
    /// A link in a DDI answer points outside the server's own origin: following it would send the token there.
    #[error("{url}: link outside the server's origin {origin}; not followed")]
    ForeignLink {
        /// The link (redacted).
        url: String,
        /// The configured server's origin.
        origin: String,
    },
    /// The body is larger than any DDI document should be.
    #[error("{url}: answer larger than {limit} bytes; not read")]
    TooLarge {
        /// The URL (redacted).
        url: String,
        /// The cap.
        limit: u64,
    },
}

/// The largest DDI JSON body read (1 MiB): a poll answer or a deployment is a few KiB; a hostile server's endless
/// answer must not become the daemon's memory.
pub const MAX_JSON: u64 = 1 << 20;

/// The DDI client of one controller.
#[derive(Debug, Clone)]
pub struct DdiClient {
    base: String,
    client: Client,
    auth: Option<String>,
    settings: ServerSettings,
}

impl DdiClient {
    /// Builds the client (reads the CA bundle and client identity, and the proxy environment).
    pub fn new(settings: &ServerSettings) -> Result<Self, DdiError> {
        let auth = match &settings.auth {
            ServerAuth::TargetToken(t) => Some(format!("TargetToken {t}")),
            ServerAuth::GatewayToken(t) => Some(format!("GatewayToken {t}")),
            ServerAuth::None | ServerAuth::Certificate => None,
        };
        // The client follows no redirects: DDI resources are not redirected, and a redirect would take the token
        // along to wherever it points.
        let mut builder = Client::builder()
            .default_header("Accept", "application/hal+json, application/json")
            .connect_timeout(settings.timeout)
            // Each socket read and write (a poll's whole answer is a few KiB, so in effect the request).
            .timeout(settings.timeout)
            .ca_bundle(settings.ca_bundle.as_deref())
            .client_identity(settings.client_identity.as_deref());
        if let Some(a) = &auth {
            builder = builder.default_header("Authorization", a);
        }
        let client = builder.build().map_err(|e| DdiError::Setup(chain(&e)))?;
        let base = format!("{}/{}/controller/v1/{}", settings.url, settings.tenant, settings.controller_id);
        Ok(Self { base, client, auth, settings: settings.clone() })
    }

    /// `{server}/{tenant}/controller/v1/{controllerId}`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// HTTP settings for downloading artifacts with the same CA and client identity. The token goes only to the
    /// server's own origin (scheme, host, port), checked per request by the installer, redirects and refreshed
    /// links included: a pre-signed link on a storage host gets no credentials. A server reached over `https`
    /// may not send the device to a plain `http` link unless `server.allow_insecure_downloads` says so.
    pub fn download_options(&self) -> otter_installer::HttpOptions {
        otter_installer::HttpOptions {
            ca_bundle: self.settings.ca_bundle.clone(),
            client_identity: self.settings.client_identity.clone(),
            headers: self.auth.iter().map(|a| ("Authorization".to_owned(), a.clone())).collect(),
            credential_origin: Some(self.settings.url.clone()),
            https_only: self.settings.url.starts_with("https://") && !self.settings.allow_insecure_downloads,
            max_resumes: self.settings.max_resumes,
            initial_backoff: self.settings.resume_backoff,
            max_backoff: self.settings.resume_backoff.saturating_mul(16).max(Duration::from_secs(1)),
            connect_timeout: self.settings.timeout,
            read_timeout: self.settings.timeout,
            ..otter_installer::HttpOptions::default()
        }
    }

    /// Sends a request; a status other than 2xx is an error.
    fn call(&self, method: Method, url: &str, body: Option<Vec<u8>>) -> Result<Response, DdiError> {
        let shown = redact::url(url);
        let transport = |e: HttpError| DdiError::Transport { url: shown.clone(), message: redact::text(&chain(&e)) };
        let mut req = Request::new(method, Url::parse(url).map_err(transport)?);
        if let Some(b) = body {
            req = req.json(b);
        }
        let r = self.client.send(&req).map_err(transport)?;
        let url = shown;
        match r.status() {
            200..=299 => Ok(r),
            410 => Err(DdiError::Gone { url }),
            status => Err(DdiError::Status { url, status }),
        }
    }

    /// GETs a JSON document, reading at most [`MAX_JSON`] + 1 bytes of it. Links from the server's answers are
    /// followed only on the server's own origin (they carry the token).
    fn get<T: DeserializeOwned>(&self, url: &str) -> Result<T, DdiError> {
        use std::io::Read as _;
        if !same_origin(url, &self.settings.url) {
            return Err(DdiError::ForeignLink { url: redact::url(url), origin: redact::url(&self.settings.url) });
        }
        let r = self.call(Method::Get, url, None)?;
        let mut bytes = Vec::new();
        r.take(MAX_JSON + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| DdiError::Transport { url: redact::url(url), message: redact::text(&chain(&e)) })?;
        if bytes.len() as u64 > MAX_JSON {
            return Err(DdiError::TooLarge { url: redact::url(url), limit: MAX_JSON });
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| DdiError::Malformed { url: redact::url(url), message: e.to_string() })
    }

    fn send<B: Serialize>(&self, method: Method, url: &str, body: &B) -> Result<(), DdiError> {
        use std::io::Read as _;
        let body = serde_json::to_vec(body).expect("serialisable");
        let r = self.call(method, url, Some(body))?;
        // The answer's body is not used; read (up to MAX_JSON) so the connection serves the next poll, and a
        // failure here changes nothing: the server has answered.
        let _ = std::io::copy(&mut r.take(MAX_JSON), &mut std::io::sink());
        Ok(())
    }

    /// Polls the controller base.
    pub fn poll(&self) -> Result<ControllerBase, DdiError> {
        self.get(&self.base)
    }

    /// Reads a deployment (or confirmation) from the link the poll gave.
    pub fn deployment(&self, href: &str) -> Result<DeploymentBase, DdiError> {
        self.get(href)
    }

    /// Reads a cancel request.
    pub fn cancel_action(&self, href: &str) -> Result<CancelActionBase, DdiError> {
        self.get(href)
    }

    /// Posts feedback on a deployment.
    pub fn deployment_feedback(&self, action_id: &str, f: &Feedback) -> Result<(), DdiError> {
        self.send(Method::Post, &format!("{}/deploymentBase/{action_id}/feedback", self.base), f)
    }

    /// Posts the answer to a cancel request.
    pub fn cancel_feedback(&self, cancel_id: &str, f: &Feedback) -> Result<(), DdiError> {
        self.send(Method::Post, &format!("{}/cancelAction/{cancel_id}/feedback", self.base), f)
    }

    /// Posts a consent decision.
    pub fn confirmation_feedback(&self, action_id: &str, f: &ConfirmationFeedback) -> Result<(), DdiError> {
        self.send(Method::Post, &format!("{}/confirmationBase/{action_id}/feedback", self.base), f)
    }

    /// Uploads attributes.
    pub fn config_data(&self, data: &ConfigData) -> Result<(), DdiError> {
        self.send(Method::Put, &format!("{}/configData", self.base), data)
    }
}

/// Whether `url` has the origin (scheme, host, port) of `server`.
pub fn same_origin(url: &str, server: &str) -> bool {
    match (Url::parse(url), Url::parse(server)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}

/// The action id in a `deploymentBase/{id}`, `cancelAction/{id}` or `confirmationBase/{id}` link.
pub fn action_id(href: &str) -> Option<String> {
    let path = href.split(['?', '#']).next()?;
    let id = path.trim_end_matches('/').rsplit('/').next()?;
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')).then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn links_are_followed_only_on_the_servers_origin() {
        let server = "https://hb.example:8443";
        assert!(super::same_origin("https://hb.example:8443/T/controller/v1/d/deploymentBase/5", server));
        assert!(!super::same_origin("https://evil.example:8443/T/controller/v1/d/deploymentBase/5", server));
        assert!(!super::same_origin("http://hb.example:8443/x", server), "another scheme");
        assert!(!super::same_origin("https://hb.example/x", server), "another port");
        assert!(!super::same_origin("/etc/shadow", server));
        assert!(!super::same_origin("file:///etc/shadow", server));
        assert!(super::same_origin("https://hb.example/x", "https://hb.example:443"), "default port");
    }

    #[test]
    fn action_ids_from_links() {
        assert_eq!(super::action_id("https://hb/T/controller/v1/d/deploymentBase/5?c=-21"), Some("5".into()));
        assert_eq!(super::action_id("https://hb/T/controller/v1/d/cancelAction/11"), Some("11".into()));
        assert_eq!(super::action_id("https://hb/x/?c=1"), Some("x".into()));
    }
}
