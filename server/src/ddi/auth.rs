//! Who is asking: device authentication for `/{tenant}/controller/v1/{controllerId}/…`.
//!
//! Three credentials, as hawkBit has them:
//! - `Authorization: TargetToken <t>`: the device's own token. It must be the token of the controller id in the
//!   path; a device using its token under another id is refused (401) and the attempt goes to the log and the
//!   audit trail.
//! - `Authorization: GatewayToken <t>`: the tenant-wide token (`--gateway-token`), compared in constant time; it may
//!   act for any controller id. With `--auto-register` an unknown id is registered at its first poll.
//! - A client certificate, with `--trust-proxy-client-cert`: TLS is terminated by a reverse proxy that verifies the
//!   device's certificate against the fleet CA and passes its subject CN in `X-Client-Cert-CN`; the CN must equal
//!   the controller id. Deploy it so that devices can reach the server only through that proxy, and have the proxy
//!   overwrite (never forward) a client-sent `X-Client-Cert-CN`, e.g. with nginx
//!   `ssl_verify_client on; ssl_client_certificate fleet-ca.pem; proxy_set_header X-Client-Cert-CN $ssl_client_s_dn_cn;`
//!   (`$ssl_client_s_dn_cn` from a `map` over `$ssl_client_s_dn`). Anyone who can reach the server directly can set
//!   the header, which is why the option is off by default and the header is ignored without it.
//!
//! Each authenticated request records `last_seen_ms`: the first contact at once, later ones when the stored time
//! is older than `--seen-resolution` (300 s), through the [`crate::devices::SeenBuffer`] (written once a second for
//! all devices together): a poll is the hot path, and a write per poll would be most of its cost.

use axum::http::HeaderMap;

use crate::AppState;
use crate::auth::{same_secret, secret_hash};
use crate::db::{Db, now_ms};
use crate::devices::{self, Identity};
use crate::error::{HttpError, HttpResult};

/// The header a TLS-terminating proxy sets to the verified client certificate's subject CN.
pub const CLIENT_CERT_CN: &str = "x-client-cert-cn";

/// The credential a request carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// `TargetToken`.
    Target(String),
    /// `GatewayToken`.
    Gateway(String),
    /// A client certificate's CN, from the trusted proxy.
    ClientCert(String),
}

/// Whether an unknown controller id may be registered by this request (only the poll does, as in hawkBit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Register {
    /// The poll: register with `--auto-register`.
    IfAllowed,
    /// Any other resource: an unknown id is 404.
    Never,
}

/// Reads the credential of a request. `Authorization` wins over a client certificate.
pub fn credential(headers: &HeaderMap, trust_proxy_client_cert: bool) -> HttpResult<Credential> {
    if let Some(v) = headers.get(axum::http::header::AUTHORIZATION) {
        let v = v.to_str().map_err(|_| HttpError::Unauthorized("Authorization header is not text".into()))?;
        let (scheme, token) = v.trim().split_once(' ').unwrap_or((v, ""));
        let token = token.trim();
        if token.is_empty() {
            return Err(HttpError::Unauthorized("Authorization header without a token".into()));
        }
        return match scheme.to_ascii_lowercase().as_str() {
            "targettoken" => Ok(Credential::Target(token.to_owned())),
            "gatewaytoken" => Ok(Credential::Gateway(token.to_owned())),
            _ => Err(HttpError::Unauthorized(format!(
                "Authorization scheme {scheme:?}: expected TargetToken or GatewayToken"
            ))),
        };
    }
    if trust_proxy_client_cert && let Some(v) = headers.get(CLIENT_CERT_CN) {
        let cn = v.to_str().map_err(|_| HttpError::Unauthorized("client certificate CN is not text".into()))?;
        return Ok(Credential::ClientCert(cn.trim().to_owned()));
    }
    Err(HttpError::Unauthorized(
        "no credential: send Authorization: TargetToken <token> (or GatewayToken <token>)".into(),
    ))
}

/// What a device request reads about the device: at least its [`Identity`]. The poll reads everything it answers
/// from in the same query as the identity ([`super::poll`]); other requests read the identity alone.
pub trait Known {
    /// The device's identity.
    fn identity(&self) -> &Identity;
}

impl Known for Identity {
    fn identity(&self) -> &Identity {
        self
    }
}

/// Authenticates a device request and returns the device it acts for.
pub async fn authenticate(
    state: &AppState,
    tenant: &str,
    controller_id: &str,
    headers: &HeaderMap,
    register: Register,
) -> HttpResult<Identity> {
    authenticate_as(state, tenant, controller_id, headers, register, devices::identity).await
}

/// [`authenticate`], reading the device with `read` (by controller id), which returns at least its identity.
pub async fn authenticate_as<T: Known>(
    state: &AppState,
    tenant: &str,
    controller_id: &str,
    headers: &HeaderMap,
    register: Register,
    read: impl AsyncFn(&Db, &str) -> Result<Option<T>, sqlx::Error>,
) -> HttpResult<T> {
    if tenant != state.config.tenant {
        return Err(HttpError::NotFound(format!("no tenant {tenant:?}")));
    }
    if !devices::valid_controller_id(controller_id) {
        return Err(HttpError::NotFound("invalid controller id".into()));
    }
    let device = match credential(headers, state.config.trust_proxy_client_cert)? {
        Credential::Target(token) => by_target_token(state, controller_id, &token, read).await?,
        Credential::Gateway(token) => {
            let valid = state.config.gateway_token.as_deref().is_some_and(|g| same_secret(&token, g));
            if !valid {
                tracing::warn!("ddi: a request for {controller_id:?} with a wrong gateway token");
                return Err(HttpError::Unauthorized("gateway token not accepted".into()));
            }
            known_or_registered(state, controller_id, register, "gateway", read).await?
        }
        Credential::ClientCert(cn) => {
            if cn != controller_id {
                tracing::warn!("ddi: client certificate CN {cn:?} used for controller id {controller_id:?}");
                return Err(HttpError::Unauthorized("the client certificate is not this controller's".into()));
            }
            known_or_registered(state, controller_id, register, &format!("client-cert:{cn}"), read).await?
        }
    };
    let (id, now) = (device.identity().id, now_ms());
    match device.identity().last_seen_ms {
        None => devices::touch(&state.db, id).await?,
        Some(t) if now - t >= state.config.seen_resolution.as_millis() as i64 => state.seen.note(id, now),
        Some(_) => {}
    }
    Ok(device)
}

async fn by_target_token<T: Known>(
    state: &AppState,
    controller_id: &str,
    token: &str,
    read: impl AsyncFn(&Db, &str) -> Result<Option<T>, sqlx::Error>,
) -> HttpResult<T> {
    let device = read(&state.db, controller_id).await?;
    let hash = secret_hash(token);
    if let Some(d) = device
        && d.identity().token_hash.as_deref().is_some_and(|h| same_secret(h, &hash))
    {
        return Ok(d);
    }
    // Refused. A valid token of another device is worth an audit entry: a device claiming someone else's id is
    // either misconfigured or an attack, and an operator should see which.
    match devices::controller_id_of_token(&state.db, token).await? {
        Some(owner) => {
            tracing::warn!("ddi: device {owner:?} presented its target token as controller {controller_id:?}");
            crate::audit::append(
                &state.db,
                &format!("device:{owner}"),
                "device.id-mismatch",
                &format!("device:{controller_id}"),
                serde_json::json!({"claimed": controller_id, "token_of": owner}),
            )
            .await?;
        }
        None => tracing::warn!("ddi: a request for {controller_id:?} with an unknown or revoked target token"),
    }
    Err(HttpError::Unauthorized("target token not accepted for this controller id".into()))
}

async fn known_or_registered<T: Known>(
    state: &AppState,
    controller_id: &str,
    register: Register,
    by: &str,
    read: impl AsyncFn(&Db, &str) -> Result<Option<T>, sqlx::Error>,
) -> HttpResult<T> {
    if let Some(d) = read(&state.db, controller_id).await? {
        return Ok(d);
    }
    if register == Register::Never || !state.config.auto_register {
        return Err(HttpError::NotFound(format!("controller {controller_id} is not registered")));
    }
    match devices::register(&state.db, controller_id, None, &[], false, by).await {
        Ok(_) => tracing::info!("ddi: registered {controller_id:?} at its first poll ({by})"),
        // Two first polls at once: the other one registered it.
        Err(HttpError::Conflict(_)) => {}
        Err(e) => return Err(e),
    }
    read(&state.db, controller_id)
        .await?
        .ok_or_else(|| HttpError::Internal(anyhow::anyhow!("device {controller_id} vanished after registration")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn credentials_are_read_by_scheme() {
        let c = |h: &[(&'static str, &str)], proxy| credential(&headers(h), proxy);
        assert_eq!(c(&[("authorization", "TargetToken abc")], false).unwrap(), Credential::Target("abc".into()));
        assert_eq!(c(&[("authorization", "gatewaytoken  g ")], false).unwrap(), Credential::Gateway("g".into()));
        assert!(c(&[("authorization", "Bearer x")], false).is_err());
        assert!(c(&[("authorization", "TargetToken")], false).is_err());
        assert!(c(&[], false).is_err());
        // The proxy's header counts only when the proxy is trusted.
        assert!(c(&[("x-client-cert-cn", "dev1")], false).is_err());
        assert_eq!(c(&[("x-client-cert-cn", "dev1")], true).unwrap(), Credential::ClientCert("dev1".into()));
    }
}
