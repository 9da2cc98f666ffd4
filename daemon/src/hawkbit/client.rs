//! A blocking DDI client: one method per resource, typed bodies, typed errors. Authentication (TargetToken,
//! GatewayToken, client certificate) and the private CA are applied to every request, including artifact
//! downloads (see [`DdiClient::download_options`]).

use std::time::Duration;

use otter_common::error_chain as chain;
use reqwest::blocking::{Client, Response};
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::model::{CancelActionBase, ConfigData, ConfirmationFeedback, ControllerBase, DeploymentBase, Feedback};
use crate::config::{ServerAuth, ServerSettings};

/// A failed DDI request.
#[derive(Debug, thiserror::Error)]
pub enum DdiError {
    /// The client could not be built (bad CA bundle, client certificate or token).
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
}

/// The DDI client of one controller.
#[derive(Debug, Clone)]
pub struct DdiClient {
    base: String,
    client: Client,
    auth: Option<String>,
    settings: ServerSettings,
}

impl DdiClient {
    /// Builds the client (reads the CA bundle and client identity).
    pub fn new(settings: &ServerSettings) -> Result<Self, DdiError> {
        otter_common::http::init_tls();
        let setup = |what: String| DdiError::Setup(what);
        let auth = match &settings.auth {
            ServerAuth::TargetToken(t) => Some(format!("TargetToken {t}")),
            ServerAuth::GatewayToken(t) => Some(format!("GatewayToken {t}")),
            ServerAuth::None | ServerAuth::Certificate => None,
        };
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/hal+json, application/json"));
        if let Some(a) = &auth {
            let mut v =
                HeaderValue::from_str(a).map_err(|_| setup("server.token contains invalid characters".into()))?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        let base = || {
            Client::builder()
                .default_headers(headers.clone())
                .connect_timeout(settings.timeout)
                .timeout(settings.timeout)
        };
        let client =
            otter_common::http::tls_client(base, settings.ca_bundle.as_deref(), settings.client_identity.as_deref())
                .map_err(setup)?;
        let base = format!("{}/{}/controller/v1/{}", settings.url, settings.tenant, settings.controller_id);
        Ok(Self { base, client, auth, settings: settings.clone() })
    }

    /// `{server}/{tenant}/controller/v1/{controllerId}`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// HTTP settings for downloading artifacts with the same credentials and CA.
    pub fn download_options(&self) -> otter_installer::HttpOptions {
        otter_installer::HttpOptions {
            ca_bundle: self.settings.ca_bundle.clone(),
            client_identity: self.settings.client_identity.clone(),
            headers: self.auth.iter().map(|a| ("Authorization".to_owned(), a.clone())).collect(),
            max_resumes: self.settings.max_resumes,
            initial_backoff: self.settings.resume_backoff,
            max_backoff: self.settings.resume_backoff.saturating_mul(16).max(Duration::from_secs(1)),
            connect_timeout: self.settings.timeout,
            read_timeout: self.settings.timeout,
            ..otter_installer::HttpOptions::default()
        }
    }

    fn check(&self, url: &str, r: Result<Response, reqwest::Error>) -> Result<Response, DdiError> {
        let r = r.map_err(|e| DdiError::Transport { url: url.to_owned(), message: chain(&e) })?;
        match r.status().as_u16() {
            200..=299 => Ok(r),
            410 => Err(DdiError::Gone { url: url.to_owned() }),
            status => Err(DdiError::Status { url: url.to_owned(), status }),
        }
    }

    fn get<T: DeserializeOwned>(&self, url: &str) -> Result<T, DdiError> {
        let r = self.check(url, self.client.get(url).send())?;
        let bytes = r.bytes().map_err(|e| DdiError::Transport { url: url.to_owned(), message: chain(&e) })?;
        serde_json::from_slice(&bytes).map_err(|e| DdiError::Malformed { url: url.to_owned(), message: e.to_string() })
    }

    fn send<B: Serialize>(&self, method: reqwest::Method, url: &str, body: &B) -> Result<(), DdiError> {
        let body = serde_json::to_vec(body).expect("serialisable");
        let req = self.client.request(method, url).header("Content-Type", "application/json").body(body);
        self.check(url, req.send()).map(drop)
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
        self.send(reqwest::Method::POST, &format!("{}/deploymentBase/{action_id}/feedback", self.base), f)
    }

    /// Posts the answer to a cancel request.
    pub fn cancel_feedback(&self, cancel_id: &str, f: &Feedback) -> Result<(), DdiError> {
        self.send(reqwest::Method::POST, &format!("{}/cancelAction/{cancel_id}/feedback", self.base), f)
    }

    /// Posts a consent decision.
    pub fn confirmation_feedback(&self, action_id: &str, f: &ConfirmationFeedback) -> Result<(), DdiError> {
        self.send(reqwest::Method::POST, &format!("{}/confirmationBase/{action_id}/feedback", self.base), f)
    }

    /// Uploads attributes.
    pub fn config_data(&self, data: &ConfigData) -> Result<(), DdiError> {
        self.send(reqwest::Method::PUT, &format!("{}/configData", self.base), data)
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
    fn action_ids_from_links() {
        assert_eq!(super::action_id("https://hb/T/controller/v1/d/deploymentBase/5?c=-21"), Some("5".into()));
        assert_eq!(super::action_id("https://hb/T/controller/v1/d/cancelAction/11"), Some("11".into()));
        assert_eq!(super::action_id("https://hb/x/?c=1"), Some("x".into()));
    }
}
