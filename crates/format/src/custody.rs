//! Signatures that say who vouches for a document: the room box signs each recording's manifest
//! with its device key, the department server signs each receipt with its server key. Both keys
//! have certificates from the department CA, and each signature carries its certificate chain,
//! so anyone holding the CA certificate can check who signed — without any department key.
//!
//! A signature is over `"neoflix-signature-v1" 0 purpose 0 signed_utc 0 SHA-256(document)`:
//! the purpose keeps a receipt signature from passing as a manifest signature, and the time is
//! the one the certificate's validity is judged at when the document is checked later (a
//! certificate that has expired since still vouches for what it signed while it was valid).
//! The format is specified in `docs/sealed-format.md` ("Custody").

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rustls::SignatureScheme;
use rustls::client::danger::ServerCertVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use serde::{Deserialize, Serialize};

use crate::SignatureError;

/// The signature's file name in a recording directory, next to `manifest.json`.
pub const SIGNATURE_FILE: &str = "manifest.sig";
/// The format tag of a signature.
pub const SIGNATURE_FORMAT: &str = "neoflix-signature-v1";
/// The largest signature file read: a certificate chain of a few certificates fits many times.
pub const MAX_SIGNATURE_BYTES: u64 = 64 * 1024;
/// At most this many certificates travel with a signature (end entity and intermediates).
pub const MAX_CERTIFICATES: usize = 8;

/// What a signature vouches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// A room box's recording manifest.
    Manifest,
    /// The department server's receipt for a stored recording.
    Receipt,
    /// The department server's notice that a recording was withdrawn.
    Withdrawal,
}

impl Purpose {
    fn name(self) -> &'static str {
        match self {
            Purpose::Manifest => "manifest",
            Purpose::Receipt => "receipt",
            Purpose::Withdrawal => "withdrawal",
        }
    }
}

/// The signature algorithms used and accepted: those a department CA gives its certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// ECDSA on P-256 with SHA-256 (what `neoflix pki` issues).
    EcdsaP256Sha256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384Sha384,
    /// Ed25519.
    Ed25519,
    /// RSA-PSS with SHA-256, for CAs that issue RSA keys.
    RsaPssSha256,
}

impl Algorithm {
    const ALL: [(Algorithm, SignatureScheme); 4] = [
        (
            Algorithm::EcdsaP256Sha256,
            SignatureScheme::ECDSA_NISTP256_SHA256,
        ),
        (
            Algorithm::EcdsaP384Sha384,
            SignatureScheme::ECDSA_NISTP384_SHA384,
        ),
        (Algorithm::Ed25519, SignatureScheme::ED25519),
        (Algorithm::RsaPssSha256, SignatureScheme::RSA_PSS_SHA256),
    ];

    fn verifier(self) -> &'static dyn rustls_pki_types::SignatureVerificationAlgorithm {
        match self {
            Algorithm::EcdsaP256Sha256 => webpki::ring::ECDSA_P256_SHA256,
            Algorithm::EcdsaP384Sha384 => webpki::ring::ECDSA_P384_SHA384,
            Algorithm::Ed25519 => webpki::ring::ED25519,
            Algorithm::RsaPssSha256 => webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        }
    }
}

/// A signature with the certificate chain of its signer (`manifest.sig`, or inside a receipt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// Always [`SIGNATURE_FORMAT`].
    pub format: String,
    /// What is signed.
    pub purpose: Purpose,
    /// When it was signed (RFC 3339 UTC), as the signer's clock said.
    pub signed_utc: String,
    /// Lowercase hex SHA-256 of the signed document's bytes.
    pub sha256: String,
    /// The signature algorithm.
    pub algorithm: Algorithm,
    /// The signature, base64.
    pub signature: String,
    /// The signer's certificate first, then any intermediates; base64 DER.
    pub certificates: Vec<String>,
}

/// Who signed, as their certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// The certificate's subject common name: the device id of a room box, the server's name.
    pub name: String,
    /// When it was signed.
    pub signed_utc: String,
    /// Whether the certificate was checked against a CA ([`TrustAnchors`] or the server's own
    /// verifier). `false` means only that the document is unchanged since *someone* holding that
    /// certificate's key signed it.
    pub chain_checked: bool,
}

fn message(purpose: Purpose, signed_utc: &str, doc: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let mut m = Vec::with_capacity(64 + signed_utc.len());
    m.extend_from_slice(SIGNATURE_FORMAT.as_bytes());
    m.push(0);
    m.extend_from_slice(purpose.name().as_bytes());
    m.push(0);
    m.extend_from_slice(signed_utc.as_bytes());
    m.push(0);
    m.extend_from_slice(&sha2::Sha256::digest(doc));
    m
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A signing key with its certificate chain: a room box's device identity (the mTLS key and
/// certificate it uploads with) or the department server's.
pub struct SigningIdentity {
    /// The key, through rustls' key loading, so that every key type a TLS key may be works.
    key: Arc<dyn rustls::sign::SigningKey>,
    /// The certificate chain, signer first.
    chain: Vec<CertificateDer<'static>>,
    /// The signer's common name, for logs and status.
    name: String,
}

impl std::fmt::Debug for SigningIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningIdentity({})", self.name)
    }
}

impl SigningIdentity {
    /// Loads a PEM certificate chain (signer first) and its PEM private key.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, SignatureError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SignatureError::Identity(format!("certificate file: {e}")))?;
        let first = chain.first().ok_or_else(|| {
            SignatureError::Identity("the certificate file holds no PEM certificate".into())
        })?;
        let name = neoflix_pki::device_id(first)
            .map_err(|e| SignatureError::Identity(format!("certificate: {e}")))?;
        let der = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| SignatureError::Identity(format!("key file: {e}")))?;
        let key = provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| SignatureError::Identity(format!("key file: {e}")))?;
        let id = Self { key, chain, name };
        // A key that does not belong to its certificate would sign what nobody can check.
        let probe = id.sign(Purpose::Manifest, b"probe", SystemTime::UNIX_EPOCH)?;
        probe.check(Purpose::Manifest, b"probe").map_err(|_| {
            SignatureError::Identity("the key does not belong to the certificate".into())
        })?;
        Ok(id)
    }

    /// The signer's name (the certificate's common name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The signer's certificate (DER).
    pub fn certificate(&self) -> &[u8] {
        &self.chain[0]
    }

    /// Signs `doc` for `purpose` at time `now`.
    pub fn sign(
        &self,
        purpose: Purpose,
        doc: &[u8],
        now: SystemTime,
    ) -> Result<Signature, SignatureError> {
        let schemes: Vec<SignatureScheme> = Algorithm::ALL.iter().map(|(_, s)| *s).collect();
        let signer = self.key.choose_scheme(&schemes).ok_or_else(|| {
            SignatureError::Identity(format!(
                "the key type ({:?}) signs none of ECDSA P-256/P-384, Ed25519, RSA-PSS",
                self.key.algorithm()
            ))
        })?;
        let algorithm = Algorithm::ALL
            .iter()
            .find(|(_, s)| *s == signer.scheme())
            .map(|(a, _)| *a)
            .ok_or_else(|| SignatureError::Identity("unexpected signature scheme".into()))?;
        let signed_utc = crate::utc(now);
        let sig = signer
            .sign(&message(purpose, &signed_utc, doc))
            .map_err(|e| SignatureError::Identity(format!("signing failed: {e}")))?;
        Ok(Signature {
            format: SIGNATURE_FORMAT.into(),
            purpose,
            signed_utc,
            sha256: crate::sha256_hex(doc),
            algorithm,
            signature: B64.encode(sig),
            certificates: self.chain.iter().map(|c| B64.encode(c)).collect(),
        })
    }
}

impl Signature {
    /// Parses a signature file.
    pub fn from_json(bytes: &[u8]) -> Result<Self, SignatureError> {
        let s: Signature = serde_json::from_slice(bytes)
            .map_err(|e| SignatureError::Malformed(format!("not a Neoflix signature: {e}")))?;
        s.validate()?;
        Ok(s)
    }

    /// Checks the form: the format tag and 1 to [`MAX_CERTIFICATES`] certificates. Every way
    /// of reading a signature goes through this (inside a receipt too).
    pub fn validate(&self) -> Result<(), SignatureError> {
        if self.format != SIGNATURE_FORMAT {
            return Err(SignatureError::Malformed(format!(
                "format '{}' is not {SIGNATURE_FORMAT}",
                self.format.escape_debug()
            )));
        }
        if self.certificates.is_empty() || self.certificates.len() > MAX_CERTIFICATES {
            return Err(SignatureError::Malformed(format!(
                "carries {} certificates (1 to {MAX_CERTIFICATES} expected)",
                self.certificates.len()
            )));
        }
        Ok(())
    }

    /// The signature file's bytes.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a signature serializes");
        v.push(b'\n');
        v
    }

    /// The certificate chain it carries, signer first.
    pub fn chain(&self) -> Result<Vec<CertificateDer<'static>>, SignatureError> {
        self.certificates
            .iter()
            .map(|c| {
                B64.decode(c)
                    .map(CertificateDer::from)
                    .map_err(|_| SignatureError::Malformed("a certificate is not base64".into()))
            })
            .collect()
    }

    /// The time it says it was signed.
    pub fn signed_at(&self) -> Result<SystemTime, SignatureError> {
        crate::parse_utc(&self.signed_utc).ok_or_else(|| {
            SignatureError::Malformed(format!(
                "signed_utc '{}' is not an RFC 3339 time",
                self.signed_utc.escape_debug()
            ))
        })
    }

    /// Checks that this is a signature for `purpose` over exactly `doc`, made with the key of the
    /// certificate it carries. Says nothing yet about whether that certificate is trusted: see
    /// [`TrustAnchors`] or [`Signature::check_with_client_verifier`].
    pub fn check(&self, purpose: Purpose, doc: &[u8]) -> Result<Signer, SignatureError> {
        self.validate()?;
        let what = purpose.name();
        if self.purpose != purpose {
            return Err(SignatureError::Malformed(format!(
                "it signs a {}, not a {what}",
                self.purpose.name()
            )));
        }
        if self.sha256 != crate::sha256_hex(doc) {
            return Err(SignatureError::DocumentChanged { what });
        }
        self.signed_at()?;
        let chain = self.chain()?;
        let name = neoflix_pki::device_id(&chain[0])
            .map_err(|e| SignatureError::Malformed(format!("signer certificate: {e}")))?;
        let ee = webpki::EndEntityCert::try_from(&chain[0])
            .map_err(|e| SignatureError::Malformed(format!("signer certificate: {e:?}")))?;
        let sig = B64
            .decode(&self.signature)
            .map_err(|_| SignatureError::Malformed("the signature is not base64".into()))?;
        ee.verify_signature(
            self.algorithm.verifier(),
            &message(purpose, &self.signed_utc, doc),
            &sig,
        )
        .map_err(|_| SignatureError::BadSignature {
            signer: name.clone(),
        })?;
        Ok(Signer {
            name,
            signed_utc: self.signed_utc.clone(),
            chain_checked: false,
        })
    }

    /// [`Signature::check`], then the signer's certificate against a client-certificate verifier
    /// (the one the ingest server authenticates room boxes with, CRL included) at time `at`.
    pub fn check_with_client_verifier(
        &self,
        purpose: Purpose,
        doc: &[u8],
        verifier: &dyn ClientCertVerifier,
        at: SystemTime,
    ) -> Result<Signer, SignatureError> {
        let mut signer = self.check(purpose, doc)?;
        let chain = self.chain()?;
        let (ee, rest) = chain
            .split_first()
            .ok_or_else(|| SignatureError::Malformed("no certificate".into()))?;
        verifier
            .verify_client_cert(ee, rest, unix(at))
            .map_err(|e| SignatureError::Untrusted {
                signer: signer.name.clone(),
                reason: e.to_string(),
            })?;
        signer.chain_checked = true;
        Ok(signer)
    }
}

fn unix(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO),
    )
}

/// The department CA (and optionally its CRL), to check who signed.
pub struct TrustAnchors {
    /// Checks room boxes' certificates (client authentication).
    devices: Arc<dyn ClientCertVerifier>,
    /// Checks the server's certificates (server authentication).
    servers: Arc<dyn ServerCertVerifier>,
}

impl TrustAnchors {
    /// From the CA certificate(s) in PEM and, optionally, a PEM CRL (revoked certificates are
    /// then refused whenever the document was signed).
    pub fn from_pem(ca_pem: &[u8], crl_pem: Option<&[u8]>) -> Result<Self, SignatureError> {
        let mut roots = rustls::RootCertStore::empty();
        let mut n = 0;
        for c in CertificateDer::pem_slice_iter(ca_pem) {
            let c = c.map_err(|e| SignatureError::Identity(format!("CA file: {e}")))?;
            roots
                .add(c)
                .map_err(|e| SignatureError::Identity(format!("CA certificate: {e}")))?;
            n += 1;
        }
        if n == 0 {
            return Err(SignatureError::Identity(
                "the CA file holds no PEM certificate".into(),
            ));
        }
        let crls = match crl_pem {
            Some(pem) => CertificateRevocationListDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SignatureError::Identity(format!("CRL file: {e}")))?,
            None => Vec::new(),
        };
        let roots = Arc::new(roots);
        let devices =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .with_crls(crls.clone())
                .build()
                .map_err(|e| SignatureError::Identity(format!("CA: {e}")))?;
        let servers =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
                .with_crls(crls)
                .build()
                .map_err(|e| SignatureError::Identity(format!("CA: {e}")))?;
        Ok(Self { devices, servers })
    }

    /// Checks a room box's signature over a manifest: unchanged since signed, by a device
    /// certificate of this CA that was valid (and is not revoked) when it signed.
    pub fn check_device(&self, sig: &Signature, doc: &[u8]) -> Result<Signer, SignatureError> {
        let at = sig.signed_at()?;
        sig.check_with_client_verifier(Purpose::Manifest, doc, self.devices.as_ref(), at)
    }

    /// Checks the server's signature over a receipt or a withdrawal notice (`purpose`): by a
    /// server certificate of this CA for `server_name` (the host the box uploads to), valid at
    /// `now`.
    pub fn check_server(
        &self,
        purpose: Purpose,
        sig: &Signature,
        doc: &[u8],
        server_name: &str,
        now: SystemTime,
    ) -> Result<Signer, SignatureError> {
        let mut signer = sig.check(purpose, doc)?;
        let chain = sig.chain()?;
        let (ee, rest) = chain
            .split_first()
            .ok_or_else(|| SignatureError::Malformed("no certificate".into()))?;
        let name = ServerName::try_from(server_name.to_string()).map_err(|_| {
            SignatureError::Identity(format!("'{server_name}' is not a server name"))
        })?;
        self.servers
            .verify_server_cert(ee, rest, &name, &[], unix(now))
            .map_err(|e| SignatureError::Untrusted {
                signer: signer.name.clone(),
                reason: e.to_string(),
            })?;
        signer.chain_checked = true;
        Ok(signer)
    }
}

/// What a recording's signature proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Custody {
    /// Signed by this signer, who is the device the manifest names.
    Signed(Signer),
    /// No signature: recorded by a box without a signing identity (or the signature was
    /// removed, which cannot be told apart: only policy can refuse it).
    Unsigned,
}

/// Checks the signature of the recording in `dir` over `manifest_bytes` (exactly as read from
/// its `manifest.json`): unchanged since signed, by the device the manifest names, and — given
/// `trust` — by a certificate of the department CA valid when it signed. A recording without
/// `manifest.sig` is [`Custody::Unsigned`]; a signature that is there but does not hold is an
/// error, always.
pub fn check_recording(
    dir: &std::path::Path,
    manifest_bytes: &[u8],
    manifest: &crate::Manifest,
    trust: Option<&TrustAnchors>,
) -> Result<Custody, SignatureError> {
    let bytes = match crate::files::read_regular(&dir.join(SIGNATURE_FILE), MAX_SIGNATURE_BYTES) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Custody::Unsigned),
        Err(e) => return Err(SignatureError::Malformed(format!("{SIGNATURE_FILE}: {e}"))),
    };
    let sig = Signature::from_json(&bytes)?;
    let signer = match trust {
        Some(t) => t.check_device(&sig, manifest_bytes)?,
        None => sig.check(Purpose::Manifest, manifest_bytes)?,
    };
    if signer.name != manifest.device_id {
        return Err(SignatureError::WrongSigner {
            signer: signer.name,
            expected: manifest.device_id.clone(),
            what: "manifest",
        });
    }
    Ok(Custody::Signed(signer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use neoflix_pki::{Ca, Role};
    use std::fs;

    struct Pki {
        _dir: tempfile::TempDir,
        ca: Ca,
        root: std::path::PathBuf,
    }

    impl Pki {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("ca");
            let ca = Ca::init(&root, "Test Department CA").unwrap();
            Pki {
                _dir: dir,
                ca,
                root,
            }
        }

        fn identity(&self, name: &str, role: Role) -> SigningIdentity {
            let (crt, key) = self.ca.issue(name, role, None).unwrap();
            SigningIdentity::from_pem(&fs::read(crt).unwrap(), &fs::read(key).unwrap()).unwrap()
        }

        fn trust(&self) -> TrustAnchors {
            TrustAnchors::from_pem(&fs::read(self.root.join("ca.crt")).unwrap(), None).unwrap()
        }
    }

    #[test]
    fn a_signature_names_its_signer_and_any_change_of_the_document_is_caught() {
        let pki = Pki::new();
        let id = pki.identity("room-1", Role::Device);
        let doc = br#"{"device_id":"room-1","markers":[{"label":"cord clamped"}]}"#;
        let sig = id.sign(Purpose::Manifest, doc, SystemTime::now()).unwrap();
        let sig = Signature::from_json(&sig.to_json()).unwrap();
        let signer = pki.trust().check_device(&sig, doc).unwrap();
        assert_eq!(signer.name, "room-1");
        assert!(signer.chain_checked);

        let edited = br#"{"device_id":"room-1","markers":[{"label":"cord clamped!"}]}"#;
        assert!(matches!(
            pki.trust().check_device(&sig, edited),
            Err(SignatureError::DocumentChanged { what: "manifest" })
        ));
        // The digest field rewritten to match the edit: the signature itself then fails.
        let mut forged = sig.clone();
        forged.sha256 = crate::sha256_hex(edited);
        assert!(matches!(
            forged.check(Purpose::Manifest, edited),
            Err(SignatureError::BadSignature { .. })
        ));
        // So does a changed signing time (it is signed too).
        let mut backdated = sig.clone();
        backdated.signed_utc = "2020-01-01T00:00:00.000Z".into();
        assert!(matches!(
            backdated.check(Purpose::Manifest, doc),
            Err(SignatureError::BadSignature { .. })
        ));
    }

    #[test]
    fn a_certificate_of_another_ca_is_not_trusted_but_still_shows_integrity() {
        let department = Pki::new();
        let rogue = Pki::new();
        let id = rogue.identity("room-1", Role::Device);
        let doc = b"manifest";
        let sig = id.sign(Purpose::Manifest, doc, SystemTime::now()).unwrap();
        assert_eq!(sig.check(Purpose::Manifest, doc).unwrap().name, "room-1");
        let err = department.trust().check_device(&sig, doc).unwrap_err();
        assert!(matches!(err, SignatureError::Untrusted { .. }), "{err}");
        assert!(err.to_string().contains("room-1"), "{err}");
    }

    #[test]
    fn purposes_and_roles_do_not_mix() {
        let pki = Pki::new();
        let device = pki.identity("room-1", Role::Device);
        let server = pki.identity("localhost", Role::Server);
        let doc = b"doc";
        let receipt = server
            .sign(Purpose::Receipt, doc, SystemTime::now())
            .unwrap();
        assert!(matches!(
            pki.trust().check_device(&receipt, doc),
            Err(SignatureError::Malformed(_))
        ));
        let signer = pki
            .trust()
            .check_server(
                Purpose::Receipt,
                &receipt,
                doc,
                "localhost",
                SystemTime::now(),
            )
            .unwrap();
        assert_eq!(signer.name, "localhost");
        // A receipt is no withdrawal notice: a box must not delete a recording on the strength
        // of the server's word that it stored it.
        assert!(matches!(
            pki.trust().check_server(
                Purpose::Withdrawal,
                &receipt,
                doc,
                "localhost",
                SystemTime::now()
            ),
            Err(SignatureError::Malformed(_))
        ));
        assert!(matches!(
            pki.trust().check_server(
                Purpose::Receipt,
                &receipt,
                doc,
                "ingest.example",
                SystemTime::now()
            ),
            Err(SignatureError::Untrusted { .. })
        ));
        // A device's key signing a "receipt" is not a server.
        let fake = device
            .sign(Purpose::Receipt, doc, SystemTime::now())
            .unwrap();
        assert!(
            pki.trust()
                .check_server(Purpose::Receipt, &fake, doc, "localhost", SystemTime::now())
                .is_err()
        );
    }

    #[test]
    fn a_revoked_device_is_refused_and_an_expired_one_vouches_for_what_it_signed_in_time() {
        let pki = Pki::new();
        let id = pki.identity("room-1", Role::Device);
        let doc = b"manifest";
        let sig = id.sign(Purpose::Manifest, doc, SystemTime::now()).unwrap();
        pki.ca.revoke("room-1").unwrap();
        let crl = fs::read(pki.root.join("ca.crl")).unwrap();
        let ca = fs::read(pki.root.join("ca.crt")).unwrap();
        let trust = TrustAnchors::from_pem(&ca, Some(&crl)).unwrap();
        assert!(matches!(
            trust.check_device(&sig, doc),
            Err(SignatureError::Untrusted { .. })
        ));
        // Judged at the signing time: a signature from before the certificate's start is not.
        let early = id
            .sign(
                Purpose::Manifest,
                doc,
                SystemTime::UNIX_EPOCH + Duration::from_secs(1),
            )
            .unwrap();
        assert!(matches!(
            pki.trust().check_device(&early, doc),
            Err(SignatureError::Untrusted { .. })
        ));
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused_when_loaded() {
        let pki = Pki::new();
        let (crt, _) = pki.ca.issue("room-1", Role::Device, None).unwrap();
        let (_, other_key) = pki.ca.issue("room-2", Role::Device, None).unwrap();
        let err = SigningIdentity::from_pem(&fs::read(crt).unwrap(), &fs::read(other_key).unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
        assert!(SigningIdentity::from_pem(b"", b"").is_err());
    }

    /// A receipt whose signature carries no certificate was not validated on the way in and
    /// panicked the box's receipt check (index out of range).
    #[test]
    fn a_receipt_signature_without_certificates_is_an_error_not_a_panic() {
        let pki = Pki::new();
        let server = pki.identity("localhost", Role::Server);
        let r = crate::Receipt {
            recording_id: "r".into(),
            device_id: "d".into(),
            received_utc: "t".into(),
            manifest_sha256: "x".into(),
            chain: "c".into(),
            fragments: 1,
            bytes: 1,
            signed_by: "d".into(),
        };
        let mut signed = crate::SignedReceipt::sign(&r, &server, SystemTime::now()).unwrap();
        signed.signature.certificates.clear();
        let body = signed.to_json();
        match crate::SignedReceipt::from_json(&body) {
            Err(SignatureError::Malformed(_)) => {}
            Err(e) => panic!("unexpected {e}"),
            Ok((s, _)) => {
                let err = pki
                    .trust()
                    .check_server(
                        Purpose::Receipt,
                        &s.signature,
                        s.receipt.as_bytes(),
                        "localhost",
                        SystemTime::now(),
                    )
                    .unwrap_err();
                assert!(matches!(err, SignatureError::Malformed(_)), "{err}");
            }
        }
        assert!(matches!(
            signed
                .signature
                .check(Purpose::Receipt, signed.receipt.as_bytes()),
            Err(SignatureError::Malformed(_))
        ));
    }

    #[test]
    fn garbage_signature_files_are_named() {
        for junk in [&b""[..], b"{}", b"[1,2]", br#"{"format":"x"}"#] {
            assert!(matches!(
                Signature::from_json(junk),
                Err(SignatureError::Malformed(_))
            ));
        }
    }
}
