//! TLS for the native clients (feature `client`): the web's roots plus certificates a user
//! trusts (`--ca-cert`, `trust_pem`), for `wss://` and `https://` alike.

use std::sync::Arc;

use rustls_pki_types::CertificateDer;

use crate::error::Error;

/// The certificates of a PEM text; an error when it holds none or a bad one.
pub(crate) fn parse_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    use rustls_pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Connect(format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Connect("no PEM certificate found".into()));
    }
    Ok(certs)
}

/// A client configuration trusting the web's roots and `extra`.
pub(crate) fn client_config(
    extra: &[CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra {
        roots
            .add(cert.clone())
            .map_err(|e| Error::Connect(format!("cannot trust the certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Connect(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
