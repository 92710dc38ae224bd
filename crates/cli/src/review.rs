//! What `neoflix keygen`, `verify` and `export` do, apart from printing: the department key
//! pair on disk, the custody policy a reviewer chose, and the checks in order (custody first,
//! then the files against the manifest, then — with the key — every chunk).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use neoflix_export::{Exported, Gaps, Options, Signatures};
use neoflix_format::custody::Custody;
use neoflix_format::{Manifest, TrustAnchors};
use neoflix_open::DepartmentSecretKey;
use neoflix_seal::DepartmentPublicKey;

/// The two files `keygen` wrote.
#[derive(Debug)]
pub struct KeyFiles {
    /// `department.key`, mode 0600.
    pub secret: PathBuf,
    /// `department.pub`.
    pub public: PathBuf,
    /// The public key's id, as manifests name it.
    pub key_id: String,
}

/// Generates the department key pair into `out`; refuses to replace one unless `force`.
pub fn keygen(out: &Path, force: bool) -> anyhow::Result<KeyFiles> {
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let (skp, pkp) = (out.join("department.key"), out.join("department.pub"));
    if !force && (skp.exists() || pkp.exists()) {
        bail!(
            "{} already holds a department key; recordings sealed to it open only with it. Use --force to replace it",
            out.display()
        );
    }
    let sk = DepartmentSecretKey::generate()?;
    let pk = sk.public_key();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&skp)
        .with_context(|| format!("cannot write {}", skp.display()))?;
    // An existing file keeps its mode through `mode()`: make sure it is the owner's only.
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    f.write_all(sk.to_file_text().as_bytes())?;
    f.sync_all()?;
    fs::write(&pkp, pk.to_file_text())
        .with_context(|| format!("cannot write {}", pkp.display()))?;
    // Recheck the public file parses, so a truncated write is caught here, not in a room box.
    DepartmentPublicKey::from_file_text(&fs::read_to_string(&pkp)?)?;
    Ok(KeyFiles {
        secret: skp,
        public: pkp,
        key_id: pk.key_id().0,
    })
}

/// Reads `department.key`: a regular file of one short line, nothing else.
pub fn read_secret_key(path: &Path) -> anyhow::Result<DepartmentSecretKey> {
    // The path is the operator's, so a symlink to the key is fine; a FIFO, a device or a huge
    // file is refused before it is read.
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot read department key {}", path.display()))?;
    let meta = f.metadata()?;
    if !meta.is_file() || meta.len() > 4096 {
        bail!(
            "department key {} is not a key file (a regular file of one line); give the department.key that `neoflix keygen` wrote",
            path.display()
        );
    }
    let mut text = zeroize::Zeroizing::new(String::new());
    std::io::Read::read_to_string(&mut std::io::Read::take(f, 4096), &mut text)
        .with_context(|| format!("cannot read department key {}", path.display()))?;
    DepartmentSecretKey::from_file_text(&text)
        .with_context(|| format!("department key {}", path.display()))
}

/// What the reviewer asked of a recording's custody.
pub struct Policy {
    /// The department CA, from `--ca`.
    pub trust: Option<TrustAnchors>,
    /// `--allow-unsigned`.
    pub allow_unsigned: bool,
}

impl Policy {
    /// From `--ca`, `--crl` and `--allow-unsigned`.
    pub fn new(
        ca: Option<&Path>,
        crl: Option<&Path>,
        allow_unsigned: bool,
    ) -> anyhow::Result<Self> {
        let read = |p: &Path, what: &str| {
            neoflix_logging::read_small_file(p, 16 << 20)
                .with_context(|| format!("{what} {}", p.display()))
        };
        let trust = match (ca, crl) {
            (None, None) => None,
            (None, Some(_)) => bail!("--crl needs --ca (the CA that signed the CRL)"),
            (Some(p), crl) => {
                let pem = read(p, "--ca")?;
                let crl = crl.map(|c| read(c, "--crl")).transpose()?;
                Some(
                    TrustAnchors::from_pem(pem.as_bytes(), crl.as_deref().map(str::as_bytes))
                        .with_context(|| format!("--ca {}", p.display()))?,
                )
            }
        };
        Ok(Policy {
            trust,
            allow_unsigned,
        })
    }

    /// What export requires: a signature under `--ca`, or — with `--allow-unsigned` — whatever
    /// is there (a signature present is still checked, against `--ca` if given). Without
    /// either, export refuses: nobody would know who recorded the video.
    pub fn for_export(&self) -> anyhow::Result<Signatures<'_>> {
        match (&self.trust, self.allow_unsigned) {
            (Some(t), false) => Ok(Signatures::Require(t)),
            (t, true) => Ok(Signatures::AllowUnsigned(t.as_ref())),
            (None, false) => bail!(
                "give --ca with the department CA certificate (the one that issued the room boxes' certificates), so that who recorded this is checked; --allow-unsigned exports without proof of custody"
            ),
        }
    }

    /// What verify requires: as export, except that without `--ca` a signature is checked for
    /// integrity only (and the report says the signer was not checked).
    pub fn for_verify(&self) -> Signatures<'_> {
        match (&self.trust, self.allow_unsigned) {
            (Some(t), false) => Signatures::Require(t),
            (t, _) => Signatures::AllowUnsigned(t.as_ref()),
        }
    }
}

/// What `verify` found.
pub struct Verified {
    /// The manifest.
    pub manifest: Manifest,
    /// Who signed it.
    pub custody: Custody,
    /// Whether every chunk was authenticated with the department key.
    pub opened: bool,
}

/// Checks a recording: custody, then files and chain, then (with `key`) every chunk.
pub fn verify(
    dir: &Path,
    policy: &Policy,
    key: Option<&DepartmentSecretKey>,
) -> anyhow::Result<Verified> {
    let signatures = policy.for_verify();
    let (manifest, custody, opened) = match key {
        Some(k) => {
            let e = neoflix_export::check(
                dir,
                k,
                Options {
                    signatures,
                    gaps: Gaps::Refuse,
                    range: None,
                },
            )?;
            (e.manifest, e.custody, true)
        }
        None => {
            // One reading of the manifest for the signature and the files: read twice, the
            // second could be another manifest than the one whose signature was checked.
            let (bytes, m) = neoflix_format::verify::read_manifest_bytes(dir)?;
            let custody = neoflix_export::check_custody(dir, &bytes, &m, signatures)?;
            let v = neoflix_format::verify_manifest(dir, m)?;
            neoflix_format::check_contiguous(&v)?;
            (v.manifest, custody, false)
        }
    };
    if custody == Custody::Unsigned && !policy.allow_unsigned {
        bail!(
            "{}; --allow-unsigned checks the rest anyway",
            neoflix_format::SignatureError::Unsigned
        );
    }
    Ok(Verified {
        manifest,
        custody,
        opened,
    })
}

/// Exports a recording as the policy allows.
pub fn export(
    dir: &Path,
    key: &DepartmentSecretKey,
    out: &Path,
    policy: &Policy,
    gaps: Gaps,
    range: Option<(f64, f64)>,
    progress: impl FnMut(usize, usize),
) -> anyhow::Result<Exported> {
    let signatures = policy.for_export()?;
    Ok(neoflix_export::export(
        dir,
        key,
        out,
        Options {
            signatures,
            gaps,
            range,
        },
        progress,
    )?)
}

/// One line on who vouches for a recording.
pub fn describe(custody: &Custody) -> String {
    match custody {
        Custody::Signed(s) if s.chain_checked => format!(
            "signed by {} at {} (certificate checked against the department CA)",
            s.name, s.signed_utc
        ),
        Custody::Signed(s) => format!(
            "signed by {} at {}, but the certificate was NOT checked against the department CA: give --ca to know it is genuine",
            s.name, s.signed_utc
        ),
        Custody::Unsigned => {
            "UNSIGNED: nothing proves which room box recorded it or that its manifest is unchanged"
                .into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keygen_writes_a_private_secret_key_and_refuses_to_overwrite() {
        let d = tempfile::tempdir().unwrap();
        let k = keygen(d.path(), false).unwrap();
        let mode = fs::metadata(&k.secret).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sk = read_secret_key(&k.secret).unwrap();
        assert_eq!(sk.public_key().key_id().0, k.key_id);
        let err = keygen(d.path(), false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        fs::set_permissions(&k.secret, fs::Permissions::from_mode(0o644)).unwrap();
        let again = keygen(d.path(), true).unwrap();
        assert_ne!(again.key_id, k.key_id);
        let mode = fs::metadata(&again.secret).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a replaced key kept a readable mode");
        // The public key where the secret one belongs is named.
        let err = read_secret_key(&again.public).unwrap_err();
        assert!(format!("{err:#}").contains("PUBLIC"), "{err:#}");
    }

    #[test]
    fn export_without_a_ca_needs_allow_unsigned_and_verify_says_what_it_did_not_check() {
        let p = Policy::new(None, None, false).unwrap();
        let err = p.for_export().err().expect("refused");
        assert!(err.to_string().contains("--ca"), "{err}");
        assert!(matches!(
            Policy::new(None, None, true).unwrap().for_export().unwrap(),
            Signatures::AllowUnsigned(None)
        ));
        assert!(matches!(p.for_verify(), Signatures::AllowUnsigned(None)));
        let s = neoflix_format::Signer {
            name: "room-1".into(),
            signed_utc: "t".into(),
            chain_checked: false,
        };
        assert!(describe(&Custody::Signed(s)).contains("NOT checked"));
    }
}
