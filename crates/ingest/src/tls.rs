//! The mutual-TLS acceptor: a client certificate is required, verified against the configured
//! CA(s) and CRL(s). The CRL file is checked at start (every CRL in it parses and is signed by
//! a `client_ca` certificate, and it holds at least one) and re-read when it changes, so a
//! revocation takes effect without a restart.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::IngestConfig;

/// The client-certificate verifier devices are admitted with (CA and CRL): the same one checks
/// the certificate a recording's manifest was signed with.
pub type DeviceVerifier = Arc<dyn rustls::server::danger::ClientCertVerifier>;

/// Builds the acceptor from the config's files; every error names the file and what to do.
pub fn acceptor(cfg: &IngestConfig) -> anyhow::Result<(TlsAcceptor, DeviceVerifier)> {
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
    let (added, _) = roots.add_parsable_certificates(cas.clone());
    if added == 0 {
        anyhow::bail!(
            "tls.client_ca {}: no usable CA certificate in the file",
            t.client_ca.display()
        );
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if let Some(crl) = &t.crl {
        builder = builder.with_crls(load_crls(crl, &cas)?);
    }
    let verifier = builder.build().context("client certificate verifier")?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "tls.cert {} and tls.key {} do not form a usable pair",
                t.cert.display(),
                t.key.display()
            )
        })?;
    Ok((TlsAcceptor::from(Arc::new(config)), verifier))
}

/// Reads `tls.crl`: every PEM block in it must be a CRL issued and signed by one of `cas`, and
/// there must be at least one. A file that holds no CRL would otherwise turn revocation off
/// without a word.
pub fn load_crls(
    path: &Path,
    cas: &[CertificateDer<'static>],
) -> anyhow::Result<Vec<CertificateRevocationListDer<'static>>> {
    let fix = "point tls.crl at the CRL of the client_ca (`neoflix pki revoke` and `neoflix pki crl` write ca.crl), or remove the option";
    // Re-read every few seconds: a regular file of bounded size only (a CRL of a hundred
    // thousand revocations is a few MiB).
    let text = neoflix_logging::read_small_file(path, 64 << 20)
        .with_context(|| format!("tls.crl: {fix}"))?
        .into_bytes();
    let mut crls = Vec::new();
    for (i, pem) in x509_parser::pem::Pem::iter_from_buffer(&text).enumerate() {
        let pem = pem.map_err(|e| {
            anyhow::anyhow!(
                "tls.crl {}: block {} is not readable PEM ({e}); {fix}",
                path.display(),
                i + 1
            )
        })?;
        if pem.label != "X509 CRL" {
            anyhow::bail!(
                "tls.crl {}: block {} is a {}, not an X509 CRL; {fix}",
                path.display(),
                i + 1,
                crate::esc(&pem.label)
            );
        }
        let (_, crl) = x509_parser::parse_x509_crl(&pem.contents).map_err(|e| {
            anyhow::anyhow!(
                "tls.crl {}: block {} does not parse as a CRL ({e}); {fix}",
                path.display(),
                i + 1
            )
        })?;
        let signed_by_a_ca = cas.iter().any(|ca| {
            x509_parser::parse_x509_certificate(ca).is_ok_and(|(_, ca)| {
                ca.subject().as_raw() == crl.issuer().as_raw()
                    && crl.verify_signature(ca.public_key()).is_ok()
            })
        });
        if !signed_by_a_ca {
            anyhow::bail!(
                "tls.crl {}: block {} (issuer '{}') is not signed by any tls.client_ca certificate; {fix}",
                path.display(),
                i + 1,
                crate::esc(&crl.issuer().to_string())
            );
        }
        crls.push(CertificateRevocationListDer::from(pem.contents.clone()));
    }
    if crls.is_empty() {
        anyhow::bail!("tls.crl {}: holds no CRL; {fix}", path.display());
    }
    Ok(crls)
}

/// How often the CRL file's modification time and size are looked at.
const CRL_POLL: Duration = Duration::from_secs(2);

/// The acceptor in use, replaced when the CRL file changes; connections already open keep the
/// one they were accepted with.
pub struct Reloading {
    cfg: crate::IngestConfig,
    current: RwLock<(TlsAcceptor, DeviceVerifier)>,
    /// The CRL file's (modification time, size) when last read.
    seen: std::sync::Mutex<Option<(SystemTime, u64)>>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Reloading {
    /// Builds the first acceptor; errors (a bad CRL among them) refuse the start.
    pub fn new(cfg: &crate::IngestConfig) -> anyhow::Result<Arc<Reloading>> {
        let seen = cfg.tls.crl.as_deref().and_then(stamp);
        let first = acceptor(cfg)?;
        Ok(Arc::new(Reloading {
            cfg: cfg.clone(),
            current: RwLock::new(first),
            seen: std::sync::Mutex::new(seen),
        }))
    }

    /// The acceptor for a new connection.
    pub fn current(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// The device verifier in use (the CRL as last reloaded).
    pub fn verifier(&self) -> DeviceVerifier {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    /// Re-reads the CRL if its file changed since last time: swaps the acceptor when it is
    /// good, keeps the old one (and says so) when not. Blocking I/O.
    pub fn check(&self) {
        let Some(path) = self.cfg.tls.crl.as_deref() else {
            return;
        };
        let now = stamp(path);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if *seen == now {
                return;
            }
            *seen = now;
        }
        let file = crate::esc(&path.display().to_string());
        match acceptor(&self.cfg) {
            Ok(a) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = a;
                log::info!(file = file.as_str(); "CRL reloaded: new connections are checked against it");
            }
            Err(e) => {
                log::error!(file = file.as_str(), error = crate::esc(&format!("{e:#}")).as_str(); "CRL changed but cannot be used: still checking against the previous one; fix the file");
            }
        }
    }

    /// Polls the CRL file until `stop` turns true.
    pub async fn watch(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        if self.cfg.tls.crl.is_none() {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(CRL_POLL) => {}
                _ = stop.changed() => return,
            }
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.check()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_certs(dir: &Path) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(dir.join("ca.crt"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn only_a_crl_signed_by_the_client_ca_is_accepted() {
        let d = tempfile::tempdir().unwrap();
        let (ours, theirs) = (d.path().join("ours"), d.path().join("theirs"));
        neoflix_pki::Ca::init(&ours, "Our CA").unwrap();
        neoflix_pki::Ca::init(&theirs, "Their CA").unwrap();
        let cas = ca_certs(&ours);
        assert_eq!(load_crls(&ours.join("ca.crl"), &cas).unwrap().len(), 1);
        let refused = |bytes: &[u8]| {
            let p = d.path().join("test.crl");
            std::fs::write(&p, bytes).unwrap();
            format!("{:#}", load_crls(&p, &cas).unwrap_err())
        };
        assert!(refused(b"").contains("holds no CRL"));
        let ca_pem = std::fs::read(ours.join("ca.crt")).unwrap();
        assert!(refused(&ca_pem).contains("CERTIFICATE, not an X509 CRL"));
        let other = std::fs::read(theirs.join("ca.crl")).unwrap();
        assert!(refused(&other).contains("not signed by any tls.client_ca"));
        let mut mixed = std::fs::read(ours.join("ca.crl")).unwrap();
        mixed.extend_from_slice(&ca_pem);
        assert!(refused(&mixed).contains("block 2"));
        let mut garbled = std::fs::read(ours.join("ca.crl")).unwrap();
        let n = garbled.len();
        garbled[n / 2] ^= 0x01;
        assert!(refused(&garbled).contains("tls.crl"));
        assert!(load_crls(&d.path().join("absent.crl"), &cas).is_err());
    }
}
