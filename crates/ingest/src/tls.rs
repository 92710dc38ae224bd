//! The mutual-TLS acceptor: a client certificate is required, verified against the configured
//! CA(s) and CRL(s).

use std::sync::Arc;

use anyhow::Context;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::IngestConfig;

/// Builds the acceptor from the config's files; every error names the file and what to do.
pub fn acceptor(cfg: &IngestConfig) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let t = &cfg.tls;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&t.cert)
        .and_then(|i| i.collect())
        .with_context(|| {
            format!(
                "tls.cert {}: not a readable PEM certificate chain",
                t.cert.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!("tls.cert {}: no certificate in the file", t.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&t.key).with_context(|| {
        format!(
            "tls.key {}: not a readable PEM private key",
            t.key.display()
        )
    })?;
    let mut roots = RootCertStore::empty();
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&t.client_ca)
        .and_then(|i| i.collect())
        .with_context(|| {
            format!(
                "tls.client_ca {}: not a readable PEM certificate",
                t.client_ca.display()
            )
        })?;
    let (added, _) = roots.add_parsable_certificates(cas);
    if added == 0 {
        anyhow::bail!(
            "tls.client_ca {}: no usable CA certificate in the file",
            t.client_ca.display()
        );
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if let Some(crl) = &t.crl {
        let crls: Vec<CertificateRevocationListDer<'static>> =
            CertificateRevocationListDer::pem_file_iter(crl)
                .and_then(|i| i.collect())
                .with_context(|| format!("tls.crl {}: not a readable PEM CRL", crl.display()))?;
        builder = builder.with_crls(crls);
    }
    let verifier = builder.build().context("client certificate verifier")?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "tls.cert {} and tls.key {} do not form a usable pair",
                t.cert.display(),
                t.key.display()
            )
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
