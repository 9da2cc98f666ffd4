//! The HTTP client every otter component that downloads or talks to a server builds: rustls with ring, the
//! system's or a given CA bundle, an optional client identity.

use std::path::Path;

use reqwest::blocking::Client;

use crate::error_chain;

/// Installs the process-wide rustls crypto provider (ring) once; later calls are no-ops.
pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds an HTTP client with its TLS trust and identity. A CA bundle replaces the system's roots. Without one the
/// system's roots are trusted; a device that has none (no CA certificates installed) still gets a client, with an
/// empty trust store: plain `http://` works, and `https://` fails at connect (unknown issuer) until a CA bundle is
/// configured — instead of no client at all, which used to stop even a plain-http update server from working.
pub fn tls_client(
    base: impl Fn() -> reqwest::blocking::ClientBuilder,
    ca_bundle: Option<&Path>,
    client_identity: Option<&Path>,
) -> Result<Client, String> {
    init_tls();
    let roots = match ca_bundle {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("reading CA bundle {}: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("parsing CA bundle {}: {e}", path.display()))?;
            Some(certs)
        }
        None => None,
    };
    let identity = match client_identity {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("reading client identity {}: {e}", path.display()))?;
            Some(
                reqwest::Identity::from_pem(&pem)
                    .map_err(|e| format!("parsing client identity {}: {e}", path.display()))?,
            )
        }
        None => None,
    };
    let build = |roots: Option<Vec<reqwest::Certificate>>| {
        let mut b = base().tls_backend_rustls();
        if let Some(certs) = roots {
            b = b.tls_certs_only(certs);
        }
        if let Some(id) = &identity {
            b = b.identity(id.clone());
        }
        b.build()
    };
    let fallback = roots.is_none();
    build(roots)
        .or_else(|system| match fallback {
            true => build(Some(Vec::new())).map_err(|_| error_chain(&system)),
            false => Err(error_chain(&system)),
        })
        .map_err(|e| format!("building the client: {e}"))
}
