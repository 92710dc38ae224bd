//! A small private CA for departments that have none, and certificate reading for all.
//!
//! [`Ca::init`] creates `DIR/ca.key` (mode 0600) and `DIR/ca.crt`; [`Ca::issue`] writes
//! `DIR/<name>.crt` and `DIR/<name>.key` for a device (client authentication, the device id as
//! common name) or a server (server authentication, the DNS name or IP as subject alternative
//! name); [`Ca::revoke`] adds a certificate to `DIR/ca.crl`. `DIR/index.json` remembers what was
//! issued so that revocation works by name. Keys are ECDSA P-256.
//!
//! Certificates from a hospital's own CA work the same way: the ingest server reads the device
//! id with [`device_id`] (the subject's common name) and the daemon reports the days left with
//! [`days_left`], whoever issued them.
//!
//! Lifetimes: CA 10 years, devices and servers 398 days (the longest browsers accept, and a
//! yearly renewal rhythm IT knows), CRL valid for 30 days and re-signed by every `revoke` or
//! [`Ca::refresh_crl`].
#![deny(missing_docs)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use time::{Duration, OffsetDateTime};

/// CA lifetime.
pub const CA_DAYS: i64 = 3650;
/// Device and server certificate lifetime.
pub const LEAF_DAYS: i64 = 398;
/// How long a CRL is valid.
pub const CRL_DAYS: i64 = 30;

/// What went wrong.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// The CA directory already holds a CA.
    #[error("{} already holds a CA: it signed the certificates in use; refusing to replace it", .0.display())]
    Exists(PathBuf),
    /// No CA in the directory.
    #[error("no CA in {}: run `neoflix pki init --dir {}` first", .0.display(), .0.display())]
    NoCa(PathBuf),
    /// The name is not usable as a device id or server name.
    #[error("'{0}' is not a valid name: use letters, digits, '-', '_' and '.', at most 64")]
    BadName(String),
    /// Already issued, not revoked.
    #[error(
        "a certificate for '{0}' is already issued and valid: `neoflix pki renew` issues a new one beside it (before it expires), `revoke` withdraws it (a lost or stolen key)"
    )]
    AlreadyIssued(String),
    /// Nothing issued under that name.
    #[error("no certificate was issued for '{0}' by this CA")]
    Unknown(String),
    /// A certificate could not be parsed.
    #[error("not a usable certificate: {0}")]
    BadCertificate(String),
    /// The index file is damaged.
    #[error("{}: damaged index: {message}", path.display())]
    BadIndex {
        /// The index path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A room box: client authentication, device id in the common name.
    Device,
    /// The ingest server (or the MQTT broker): server authentication for a DNS name or IP.
    Server,
}

/// One issued certificate, as remembered in `index.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Issued {
    /// Device id or server name.
    pub name: String,
    /// Device or server.
    pub role: Role,
    /// Serial number, hex.
    pub serial: String,
    /// Expiry, RFC 3339.
    pub not_after: String,
    /// Revocation time, RFC 3339, once revoked.
    #[serde(default)]
    pub revoked: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    crl_number: u64,
    issued: Vec<Issued>,
}

/// A CA directory.
pub struct Ca {
    dir: PathBuf,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn write_private(path: &Path, text: &str) -> Result<(), PkiError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(text.as_bytes()).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn write_public(path: &Path, text: &str) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| PkiError::BadCertificate(format!("no randomness: {e}")))?;
    b[0] &= 0x7f; // positive
    b[0] |= 0x01; // no leading zero byte
    Ok(SerialNumber::from_slice(&b))
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Ca {
    /// Opens an existing CA directory.
    pub fn open(dir: &Path) -> Result<Ca, PkiError> {
        if !dir.join("ca.key").exists() || !dir.join("ca.crt").exists() {
            return Err(PkiError::NoCa(dir.to_owned()));
        }
        Ok(Ca {
            dir: dir.to_owned(),
        })
    }

    /// Creates a CA in `dir`: `ca.key`, `ca.crt`, an empty `ca.crl` and `index.json`.
    pub fn init(dir: &Path, name: &str) -> Result<Ca, PkiError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        if dir.join("ca.key").exists() {
            return Err(PkiError::Exists(dir.to_owned()));
        }
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, name);
        p.distinguished_name
            .push(DnType::OrganizationName, "Neoflix department CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        p.not_before = now - Duration::hours(1);
        p.not_after = now + Duration::days(CA_DAYS);
        p.serial_number = Some(random_serial()?);
        let cert = p.self_signed(&key)?;
        write_private(&dir.join("ca.key"), &key.serialize_pem())?;
        write_public(&dir.join("ca.crt"), &cert.pem())?;
        let ca = Ca {
            dir: dir.to_owned(),
        };
        let mut index = Index::default();
        ca.write_crl(&mut index)?;
        ca.save_index(&index)?;
        Ok(ca)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let kp = self.dir.join("ca.key");
        let key = KeyPair::from_pem(&fs::read_to_string(&kp).map_err(io(&kp))?)?;
        let cp = self.dir.join("ca.crt");
        Ok(Issuer::from_ca_cert_pem(
            &fs::read_to_string(&cp).map_err(io(&cp))?,
            key,
        )?)
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("index.json")
    }

    fn load_index(&self) -> Result<Index, PkiError> {
        let p = self.index_path();
        match fs::read(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(PkiError::Io { path: p, source: e }),
            Ok(b) => serde_json::from_slice(&b).map_err(|e| PkiError::BadIndex {
                path: p,
                message: e.to_string(),
            }),
        }
    }

    fn save_index(&self, index: &Index) -> Result<(), PkiError> {
        let text = serde_json::to_string_pretty(index).expect("index serializes");
        write_public(&self.index_path(), &text)
    }

    /// Issues a certificate for `name` and writes `<name>.crt` and `<name>.key` (0600).
    /// `days` overrides the lifetime (tests make expired ones with a negative value).
    pub fn issue(
        &self,
        name: &str,
        role: Role,
        days: Option<i64>,
    ) -> Result<(PathBuf, PathBuf), PkiError> {
        let index = self.load_index()?;
        if index
            .issued
            .iter()
            .any(|i| i.name == name && i.revoked.is_none())
        {
            return Err(PkiError::AlreadyIssued(name.into()));
        }
        self.issue_into(index, name, role, days)
    }

    /// Issues a new certificate and key for `name`, which holds a valid certificate, with the
    /// same role, *without* revoking the old one: renewal before expiry. The old certificate
    /// stays valid until it expires, so what it signed (recordings' manifests) still verifies;
    /// revocation is for a lost or stolen key, and refuses everything that key ever signed.
    pub fn renew(&self, name: &str, days: Option<i64>) -> Result<(PathBuf, PathBuf), PkiError> {
        let index = self.load_index()?;
        let role = index
            .issued
            .iter()
            .rev()
            .find(|i| i.name == name && i.revoked.is_none())
            .map(|i| i.role)
            .ok_or_else(|| PkiError::Unknown(name.into()))?;
        self.issue_into(index, name, role, days)
    }

    fn issue_into(
        &self,
        mut index: Index,
        name: &str,
        role: Role,
        days: Option<i64>,
    ) -> Result<(PathBuf, PathBuf), PkiError> {
        if !valid_name(name) || name == "ca" || name == "index" {
            return Err(PkiError::BadName(name.into()));
        }
        let issuer = self.issuer()?;
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, name);
        match role {
            Role::Device => {
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
            Role::Server => {
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                p.subject_alt_names = vec![match name.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(
                        name.try_into()
                            .map_err(|_| PkiError::BadName(name.into()))?,
                    ),
                }];
            }
        }
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        let days = days.unwrap_or(LEAF_DAYS);
        p.not_before =
            (now - Duration::hours(1)).min(now + Duration::days(days) - Duration::days(1));
        p.not_after = now + Duration::days(days);
        let serial = random_serial()?;
        p.serial_number = Some(serial.clone());
        let cert = p.signed_by(&key, &issuer)?;
        let (crt, keyp) = (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        );
        write_private(&keyp, &key.serialize_pem())?;
        write_public(&crt, &cert.pem())?;
        index.issued.push(Issued {
            name: name.into(),
            role,
            serial: hex::encode(serial.to_bytes()),
            not_after: rfc3339(p.not_after),
            revoked: None,
        });
        self.save_index(&index)?;
        Ok((crt, keyp))
    }

    /// Revokes every valid certificate issued for `name` (a renewed one and its predecessor
    /// alike: a lost key is the name's, not one certificate's) and re-signs `ca.crl`.
    pub fn revoke(&self, name: &str) -> Result<PathBuf, PkiError> {
        let mut index = self.load_index()?;
        let now = rfc3339(OffsetDateTime::now_utc());
        let mut any = false;
        for entry in index
            .issued
            .iter_mut()
            .filter(|i| i.name == name && i.revoked.is_none())
        {
            entry.revoked = Some(now.clone());
            any = true;
        }
        if !any {
            return Err(PkiError::Unknown(name.into()));
        }
        self.write_crl(&mut index)?;
        self.save_index(&index)?;
        Ok(self.dir.join("ca.crl"))
    }

    /// Re-signs `ca.crl` with a fresh validity period (run before it expires).
    pub fn refresh_crl(&self) -> Result<PathBuf, PkiError> {
        let mut index = self.load_index()?;
        self.write_crl(&mut index)?;
        self.save_index(&index)?;
        Ok(self.dir.join("ca.crl"))
    }

    fn write_crl(&self, index: &mut Index) -> Result<(), PkiError> {
        index.crl_number += 1;
        let now = OffsetDateTime::now_utc();
        let mut revoked = Vec::new();
        for i in index.issued.iter().filter(|i| i.revoked.is_some()) {
            let serial = hex::decode(&i.serial).map_err(|e| PkiError::BadIndex {
                path: self.index_path(),
                message: e.to_string(),
            })?;
            let when = i
                .revoked
                .as_deref()
                .and_then(|r| {
                    OffsetDateTime::parse(r, &time::format_description::well_known::Rfc3339).ok()
                })
                .unwrap_or(now);
            revoked.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: when,
                reason_code: None,
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(CRL_DAYS),
            crl_number: SerialNumber::from(index.crl_number),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer()?)?;
        write_public(&self.dir.join("ca.crl"), &crl.pem()?)
    }

    /// Everything issued, revoked ones included.
    pub fn list(&self) -> Result<Vec<Issued>, PkiError> {
        Ok(self.load_index()?.issued)
    }
}

fn parse_pem_cert(pem: &[u8]) -> Result<Vec<u8>, PkiError> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| PkiError::BadCertificate(format!("not PEM: {e}")))?;
    Ok(p.contents)
}

/// The device id in a DER certificate: its subject's common name.
pub fn device_id(der: &[u8]) -> Result<String, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| PkiError::BadCertificate("no subject common name".into()))?;
    if !valid_name(cn) {
        return Err(PkiError::BadName(cn.into()));
    }
    Ok(cn.to_string())
}

/// A TLS client configuration (ring provider, TLS 1.2+) that trusts the CA certificates in `ca`
/// and, with `identity = Some((cert, key))`, presents that certificate chain: what the uplink and
/// the MQTT connection both need. Errors name the file and what is wrong with it.
pub fn client_tls(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, PkiError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |p: &Path, m: String| PkiError::BadCertificate(format!("{}: {m}", p.display()));
    let certs = |p: &Path| -> Result<Vec<CertificateDer<'static>>, PkiError> {
        let v: Vec<_> = CertificateDer::pem_file_iter(p)
            .and_then(|i| i.collect())
            .map_err(|e| bad(p, e.to_string()))?;
        if v.is_empty() {
            return Err(bad(p, "no PEM certificate in it".into()));
        }
        Ok(v)
    };
    let mut roots = rustls::RootCertStore::empty();
    let (_, refused) = roots.add_parsable_certificates(certs(ca)?);
    if roots.is_empty() {
        return Err(bad(
            ca,
            format!("none of its {refused} certificates is usable as a CA"),
        ));
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| PkiError::BadCertificate(e.to_string()))?
    .with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = certs(cert)?;
            let k = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
            builder.with_client_auth_cert(chain, k).map_err(|e| {
                bad(
                    key,
                    format!("does not match the certificate {}: {e}", cert.display()),
                )
            })
        }
    }
}

/// Days until the (first) certificate in a PEM file expires; negative once expired.
pub fn days_left(pem: &[u8]) -> Result<i64, PkiError> {
    let der = parse_pem_cert(pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    let not_after = cert.validity().not_after.timestamp();
    Ok((not_after - OffsetDateTime::now_utc().unix_timestamp()).div_euclid(86_400))
}

#[cfg(test)]
mod tests {
    #[test]
    fn renewal_keeps_the_old_certificate_valid_and_revocation_takes_both() {
        let d = tempfile::tempdir().unwrap();
        let ca = super::Ca::init(&d.path().join("ca"), "CA").unwrap();
        let (crt, _) = ca.issue("room-1", super::Role::Device, None).unwrap();
        let old = std::fs::read(&crt).unwrap();
        assert!(matches!(
            ca.issue("room-1", super::Role::Device, None),
            Err(super::PkiError::AlreadyIssued(_))
        ));
        let (crt2, _) = ca.renew("room-1", None).unwrap();
        assert_ne!(std::fs::read(&crt2).unwrap(), old);
        let list = ca.list().unwrap();
        let valid = |l: &[super::Issued]| {
            l.iter()
                .filter(|i| i.name == "room-1" && i.revoked.is_none())
                .count()
        };
        assert_eq!(valid(&list), 2, "renewal revoked the old certificate");
        assert!(list.iter().all(|i| i.role == super::Role::Device));
        ca.revoke("room-1").unwrap();
        assert_eq!(valid(&ca.list().unwrap()), 0);
        assert!(matches!(
            ca.renew("room-1", None),
            Err(super::PkiError::Unknown(_))
        ));
    }

    use super::*;

    #[test]
    fn init_issue_revoke_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        let ca = Ca::init(d.path(), "Test NICU CA").unwrap();
        assert!(matches!(
            Ca::init(d.path(), "again"),
            Err(PkiError::Exists(_))
        ));
        let (crt, key) = ca.issue("room-1", Role::Device, None).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(d.path().join("ca.key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        let pem = fs::read(&crt).unwrap();
        let der = parse_pem_cert(&pem).unwrap();
        assert_eq!(device_id(&der).unwrap(), "room-1");
        let left = days_left(&pem).unwrap();
        assert!((LEAF_DAYS - 1..=LEAF_DAYS).contains(&left), "{left}");
        assert!(matches!(
            ca.issue("room-1", Role::Device, None),
            Err(PkiError::AlreadyIssued(_))
        ));
        ca.issue("ingest.example", Role::Server, None).unwrap();
        ca.issue("127.0.0.1", Role::Server, None).unwrap();
        ca.revoke("room-1").unwrap();
        assert!(matches!(ca.revoke("room-1"), Err(PkiError::Unknown(_))));
        ca.issue("room-1", Role::Device, None).unwrap();
        let list = ca.list().unwrap();
        assert_eq!(list.iter().filter(|i| i.name == "room-1").count(), 2);
        let crl = fs::read_to_string(d.path().join("ca.crl")).unwrap();
        assert!(crl.contains("BEGIN X509 CRL"));
        let expired = ca.issue("old-room", Role::Device, Some(-2)).unwrap().0;
        assert!(days_left(&fs::read(expired).unwrap()).unwrap() < 0);
    }

    #[test]
    fn names_that_could_escape_the_directory_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let ca = Ca::init(d.path(), "CA").unwrap();
        for bad in ["../x", "a/b", "", ".hidden", "ca", &"x".repeat(65)] {
            assert!(
                matches!(ca.issue(bad, Role::Device, None), Err(PkiError::BadName(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            Ca::open(&d.path().join("none")),
            Err(PkiError::NoCa(_))
        ));
    }
}
