//! Test support (feature `testing`, and this crate's own tests): a private CA and a server certificate it signed,
//! for TLS tests against servers on 127.0.0.1. Never in a device build.

/// A private CA (its PEM and issuer, to sign more certificates) and a server certificate for `127.0.0.1` and
/// `localhost` it signed, with the server's key.
pub struct PrivatePki {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// Signs further certificates (a client identity) with the CA.
    pub issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The server's certificate.
    pub server_cert: rcgen::Certificate,
    /// The server's key.
    pub server_key: rcgen::KeyPair,
}

/// Makes a fresh [`PrivatePki`].
pub fn private_pki() -> PrivatePki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("generating a key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("self-signing the CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("generating a key");
    let server_cert = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("server parameters")
        .signed_by(&server_key, &issuer)
        .expect("signing the server certificate");
    PrivatePki { ca_pem: ca.pem(), issuer, server_cert, server_key }
}
