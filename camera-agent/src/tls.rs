//! One rustls client configuration (ring provider) for the backend and the broker:
//! the bundled Mozilla roots, the system store (`SSL_CERT_FILE`/`SSL_CERT_DIR` are
//! honoured) and, optionally, extra CA certificates from `tls_ca_file`.

use std::sync::Arc;

use anyhow::Context;
use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Installs `ring` as the process-wide rustls provider (the test build also links
/// aws-lc-rs through the backend; rustls then refuses to guess).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn client_config(extra_ca_file: &str) -> anyhow::Result<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // Unparseable system certificates are skipped, like every TLS client does.
        let _ = roots.add(cert);
    }
    if !extra_ca_file.is_empty() {
        let mut n = 0;
        for cert in CertificateDer::pem_file_iter(extra_ca_file)
            .with_context(|| format!("reading tls_ca_file {extra_ca_file}"))?
        {
            let cert = cert.with_context(|| format!("parsing tls_ca_file {extra_ca_file}"))?;
            roots
                .add(cert)
                .with_context(|| format!("adding a CA from {extra_ca_file}"))?;
            n += 1;
        }
        if n == 0 {
            anyhow::bail!("tls_ca_file {extra_ca_file} holds no PEM certificate");
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
