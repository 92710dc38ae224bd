//! What the server vouches for: it stores a recording only when the room box's signature over
//! its manifest holds — made by the very device whose certificate uploaded it, under the CA and
//! CRL devices are admitted with — and it answers with a receipt signed by its own key.

use std::sync::Arc;
use std::time::SystemTime;

use neoflix_format::custody::{Purpose, Signature, Signer};
use neoflix_format::{Manifest, Receipt, SignatureError, SignedReceipt, SigningIdentity};

use crate::tls::{DeviceVerifier, Reloading};

/// How far a box's signing time may be ahead of the server's clock.
const MAX_CLOCK_AHEAD: std::time::Duration = std::time::Duration::from_secs(300);

/// Where the device verifier comes from: the reloading acceptor (the CRL follows its file), or
/// a fixed one.
enum Verifier {
    Reloading(Arc<Reloading>),
    Fixed(DeviceVerifier),
}

/// The server's side of custody.
pub struct Custody {
    /// Checks signers' certificates.
    verifier: Verifier,
    /// The server's key and certificate (`tls.key`, `tls.cert`): signs receipts.
    server: SigningIdentity,
}

impl Custody {
    /// Checks signers with the verifier devices are admitted with, as it is reloaded.
    pub fn new(tls: Arc<Reloading>, server: SigningIdentity) -> Self {
        Custody {
            verifier: Verifier::Reloading(tls),
            server,
        }
    }

    /// Checks signers with `verifier`.
    pub fn with_verifier(verifier: DeviceVerifier, server: SigningIdentity) -> Self {
        Custody {
            verifier: Verifier::Fixed(verifier),
            server,
        }
    }

    /// Checks the signature file `sig` over `manifest_bytes` uploaded by `device`: the
    /// manifest unchanged since signed, signed by `device` itself with a certificate valid now.
    pub fn check(
        &self,
        device: &str,
        manifest_bytes: &[u8],
        m: &Manifest,
        sig: &[u8],
    ) -> Result<Signer, SignatureError> {
        let sig = Signature::from_json(sig)?;
        let verifier = match &self.verifier {
            Verifier::Reloading(r) => r.verifier(),
            Verifier::Fixed(v) => v.clone(),
        };
        // The certificate is judged when the box signed, as every later reader judges it: a
        // recording signed in time and delivered after the certificate expired (a box offline
        // for a while) is not refused for ever. Revocation applies whenever it was signed, and
        // a signing time ahead of the server's clock is refused rather than trusted.
        let now = SystemTime::now();
        let at = sig.signed_at()?;
        if at > now + MAX_CLOCK_AHEAD {
            return Err(SignatureError::Malformed(format!(
                "signed at {}, later than this server's clock allows: the room box's clock is ahead (check its time synchronisation)",
                sig.signed_utc.escape_debug()
            )));
        }
        let signer = sig.check_with_client_verifier(
            Purpose::Manifest,
            manifest_bytes,
            verifier.as_ref(),
            at,
        )?;
        for (expected, what) in [(device, "upload"), (m.device_id.as_str(), "manifest")] {
            if signer.name != expected {
                return Err(SignatureError::WrongSigner {
                    signer: signer.name,
                    expected: expected.to_string(),
                    what: if what == "upload" {
                        "uploading device"
                    } else {
                        "manifest"
                    },
                });
            }
        }
        Ok(signer)
    }

    /// Checks signers against the CA certificates in `client_ca_pem` (no CRL), signing receipts
    /// with `server`: for tools and harnesses that serve without a TLS acceptor.
    pub fn from_pem(client_ca_pem: &[u8], server: SigningIdentity) -> Result<Self, SignatureError> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(client_ca_pem) {
            let c = c.map_err(|e| SignatureError::Identity(format!("CA file: {e}")))?;
            roots
                .add(c)
                .map_err(|e| SignatureError::Identity(format!("CA certificate: {e}")))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|e| SignatureError::Identity(format!("CA: {e}")))?;
        Ok(Self::with_verifier(verifier, server))
    }

    /// Who signed a stored signature file (for a receipt rebuilt after a crash: the check was
    /// made when the manifest was stored).
    pub fn signer_of(&self, manifest_bytes: &[u8], sig: &[u8]) -> Result<Signer, SignatureError> {
        Signature::from_json(sig)?.check(Purpose::Manifest, manifest_bytes)
    }

    /// A stored withdrawal notice signed again now, with the server's current certificate: a
    /// box offline past a renewal checks the certificate as valid at the time it asks.
    pub fn resign_withdrawal(&self, stored: &[u8]) -> Result<Vec<u8>, SignatureError> {
        let (_, notice) = neoflix_format::SignedWithdrawal::from_json(stored)?;
        Ok(
            neoflix_format::SignedWithdrawal::sign(&notice, &self.server, SystemTime::now())?
                .to_json(),
        )
    }

    /// The signed receipt for a stored manifest.
    pub fn receipt(
        &self,
        device: &str,
        manifest_bytes: &[u8],
        m: &Manifest,
        signer: &Signer,
    ) -> Result<Vec<u8>, SignatureError> {
        let now = SystemTime::now();
        let r = Receipt::for_manifest(device, manifest_bytes, m, &signer.name, now);
        Ok(SignedReceipt::sign(&r, &self.server, now)?.to_json())
    }
}

/// A department CA in a temporary directory, a room box's identity and the server's custody,
/// for tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use neoflix_pki::{Ca, Role};

    pub(crate) struct TestPki {
        pub(crate) _dir: tempfile::TempDir,
        pub(crate) ca: Ca,
        pub(crate) custody: Custody,
    }

    impl TestPki {
        pub(crate) fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let ca = Ca::init(&dir.path().join("ca"), "Test CA").unwrap();
            let (crt, key) = ca.issue("localhost", Role::Server, None).unwrap();
            let server = SigningIdentity::from_pem(
                &std::fs::read(crt).unwrap(),
                &std::fs::read(key).unwrap(),
            )
            .unwrap();
            let pem = std::fs::read(dir.path().join("ca/ca.crt")).unwrap();
            TestPki {
                _dir: dir,
                ca,
                custody: Custody::from_pem(&pem, server).unwrap(),
            }
        }

        pub(crate) fn device(&self, name: &str) -> SigningIdentity {
            let (crt, key) = self.ca.issue(name, Role::Device, None).unwrap();
            SigningIdentity::from_pem(&std::fs::read(crt).unwrap(), &std::fs::read(key).unwrap())
                .unwrap()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::TestPki;
    use super::*;
    use neoflix_pki::Role;
    use std::time::Duration;

    fn manifest(device: &str) -> (Vec<u8>, Manifest) {
        let text = format!(
            r#"{{"format":"neoflix-recording-v1","device_id":"{device}","recording_id":"r","status":"complete","trigger":"pedal","stop_reason":"pedal","first_frame_utc":null,"trigger_utc":"t","stop_utc":"t","preroll_secs":0.0,"duration_secs":0.0,"recipient_key_id":"k","markers":[],"init_segments":[],"fragments":[],"chain":"c"}}"#
        );
        let m = neoflix_format::verify::parse_manifest(text.as_bytes()).unwrap();
        (text.into_bytes(), m)
    }

    /// A recording signed while the box's certificate was valid, delivered after it expired,
    /// was refused for ever (the server judged the certificate now); one signed after expiry,
    /// or with a clock far ahead, still is.
    #[test]
    fn the_certificate_is_judged_when_the_box_signed() {
        let pki = TestPki::new();
        // Valid from two days ago until yesterday.
        let (crt, key) = pki.ca.issue("dev", Role::Device, Some(-1)).unwrap();
        let id =
            SigningIdentity::from_pem(&std::fs::read(crt).unwrap(), &std::fs::read(key).unwrap())
                .unwrap();
        let (bytes, m) = manifest("dev");
        let day = Duration::from_secs(86_400);
        let in_time = id
            .sign(Purpose::Manifest, &bytes, SystemTime::now() - day - day / 2)
            .unwrap();
        let signer = pki
            .custody
            .check("dev", &bytes, &m, &in_time.to_json())
            .unwrap();
        assert_eq!(signer.name, "dev");
        let late = id
            .sign(Purpose::Manifest, &bytes, SystemTime::now())
            .unwrap();
        let err = pki
            .custody
            .check("dev", &bytes, &m, &late.to_json())
            .unwrap_err();
        assert!(matches!(err, SignatureError::Untrusted { .. }), "{err}");
        let ahead = pki.device("dev2");
        let (bytes2, m2) = manifest("dev2");
        let future = ahead
            .sign(Purpose::Manifest, &bytes2, SystemTime::now() + day)
            .unwrap();
        let err = pki
            .custody
            .check("dev2", &bytes2, &m2, &future.to_json())
            .unwrap_err();
        assert!(err.to_string().contains("clock is ahead"), "{err}");
    }
}
