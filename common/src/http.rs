//! The HTTP client every otter component that downloads or talks to a server builds: rustls with ring, the
//! system's or a given CA bundle, an optional client identity.

use std::path::Path;

use reqwest::blocking::Client;

use crate::error_chain;

/// The largest PEM file read (CA bundle, client identity): 1 MiB. The system's whole CA bundle is about 200 KiB.
pub const MAX_PEM: u64 = 1 << 20;

/// Reads a PEM file a caller named: a regular file only (not `/dev/zero`, a FIFO or a directory), at most
/// [`MAX_PEM`] bytes (reading at most one byte more to tell).
pub fn read_pem(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    // Non-blocking open: opening a FIFO for reading would otherwise wait for a writer, forever.
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "is not a regular file"));
    }
    let mut pem = Vec::new();
    f.take(MAX_PEM + 1).read_to_end(&mut pem)?;
    if pem.len() as u64 > MAX_PEM {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("larger than {MAX_PEM} bytes")));
    }
    Ok(pem)
}

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
            let pem = read_pem(path).map_err(|e| format!("reading CA bundle {}: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("parsing CA bundle {}: {e}", path.display()))?;
            Some(certs)
        }
        None => None,
    };
    let identity = match client_identity {
        Some(path) => {
            let pem = read_pem(path).map_err(|e| format!("reading client identity {}: {e}", path.display()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_files_are_regular_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        // A FIFO would block the open or the read forever; it must be refused, not read.
        let fifo_result = std::thread::spawn(move || read_pem(&fifo).map(|_| ()).map_err(|e| e.kind()));
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'a'; MAX_PEM as usize + 10]).unwrap();
        let ok = dir.path().join("ok.pem");
        std::fs::write(&ok, b"-----BEGIN CERTIFICATE-----").unwrap();
        let zero = read_pem(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(zero.kind(), std::io::ErrorKind::InvalidInput, "{zero}");
        assert!(read_pem(&big).unwrap_err().to_string().contains("larger than"));
        assert_eq!(read_pem(&ok).unwrap(), b"-----BEGIN CERTIFICATE-----");
        assert!(read_pem(dir.path()).is_err(), "a directory");
        let start = std::time::Instant::now();
        while !fifo_result.is_finished() {
            assert!(start.elapsed() < std::time::Duration::from_secs(30), "reading a FIFO hangs");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(fifo_result.join().unwrap(), Err(std::io::ErrorKind::InvalidInput));
    }
}
