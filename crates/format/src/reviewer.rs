//! The reviewer file (`*.reviewer`): what the department server stores of a reviewer, and the
//! check of a sign-in against it — nothing that can open the wrapped key.
//!
//! The scheme (`docs/review.md`, "Keys"): Argon2id stretches the passphrase; HKDF splits the
//! result into a *wrap key*, which wraps the department secret key, and an *auth key*, whose
//! salted hash is the [`ReviewerFile::verifier`]. The server sees the auth key at sign-in and
//! stores the verifier; neither gives the wrap key. Deriving and wrapping live in
//! `neoflix-open` (the CLI that enrols, the browser that signs in).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// `format` of a reviewer file.
pub const FORMAT: &str = "neoflix-reviewer-v1";
/// Largest reviewer file read.
pub const MAX_FILE_BYTES: u64 = 16 * 1024;
/// HKDF label of the wrap key.
pub const WRAP_INFO: &[u8] = b"neoflix-reviewer-v1 wrap";
/// HKDF label of the auth key.
pub const AUTH_INFO: &[u8] = b"neoflix-reviewer-v1 auth";
/// Prefix hashed with the auth key into the verifier.
const VERIFIER_PREFIX: &[u8] = b"neoflix-reviewer-v1 verifier";
/// Length of the salt.
pub const SALT_LEN: usize = 16;
/// Length of the auth key, the wrap key and the stretched passphrase.
pub const KEY_LEN: usize = 32;
/// Length of a wrapped key: nonce (12) || department secret key (32) || tag (16).
pub const WRAPPED_LEN: usize = 12 + 32 + 16;
/// Argon2 version 0x13 (RFC 9106).
pub const ARGON2_VERSION: u32 = 19;
/// Bounds of the Argon2id memory cost, KiB: OWASP's minimum for Argon2id, and what a browser
/// tab can still allocate.
pub const MEMORY_KIB: std::ops::RangeInclusive<u32> = 19_456..=1_048_576;
/// Bounds of the Argon2id passes.
pub const ITERATIONS: std::ops::RangeInclusive<u32> = 2..=16;
/// Bounds of the Argon2id lanes.
pub const PARALLELISM: std::ops::RangeInclusive<u32> = 1..=4;

/// A reviewer file that cannot be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReviewerError {
    /// Not JSON of the reviewer file's shape (a wrong file, or one cut short in transit).
    #[error("not a reviewer file: {0}")]
    Parse(String),
    /// A field is out of its bounds (names the field and the value).
    #[error("reviewer file: {0}")]
    Field(String),
}

/// A reviewer's sign-in name: 1–64 characters of `A–Z a–z 0–9 - _ .`, not starting with `.`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ReviewerName(String);

impl ReviewerName {
    /// Checks an outside name.
    pub fn parse(name: &str) -> Result<ReviewerName, ReviewerError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if ok {
            Ok(ReviewerName(name.to_owned()))
        } else {
            Err(ReviewerError::Field(format!(
                "name {:?}: use 1-64 characters of A-Z a-z 0-9 - _ . (not starting with '.')",
                name.escape_debug().to_string()
            )))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for ReviewerName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ReviewerName::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for ReviewerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Argon2id parameters and salt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kdf {
    /// Always `"argon2id"`.
    pub algorithm: String,
    /// Always 19 (0x13).
    pub version: u32,
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
    /// Salt, base64 of [`SALT_LEN`] bytes.
    pub salt: String,
}

impl Kdf {
    /// The parameters enrolment uses, with `salt`.
    pub fn recommended(salt: &[u8; SALT_LEN]) -> Kdf {
        Kdf {
            algorithm: "argon2id".into(),
            version: ARGON2_VERSION,
            memory_kib: 65_536,
            iterations: 3,
            parallelism: 1,
            salt: B64.encode(salt),
        }
    }

    /// Checks the parameters against the bounds and returns the salt's bytes.
    pub fn check(&self) -> Result<[u8; SALT_LEN], ReviewerError> {
        let field = |m: String| Err(ReviewerError::Field(m));
        if self.algorithm != "argon2id" || self.version != ARGON2_VERSION {
            return field(format!(
                "kdf {:?} version {}: only argon2id version {ARGON2_VERSION} is known",
                self.algorithm.escape_debug().to_string(),
                self.version
            ));
        }
        for (what, value, range) in [
            ("memory_kib", self.memory_kib, MEMORY_KIB),
            ("iterations", self.iterations, ITERATIONS),
            ("parallelism", self.parallelism, PARALLELISM),
        ] {
            if !range.contains(&value) {
                return field(format!(
                    "kdf.{what} = {value} is outside {}..={}",
                    range.start(),
                    range.end()
                ));
            }
        }
        let salt = B64
            .decode(&self.salt)
            .ok()
            .and_then(|s| <[u8; SALT_LEN]>::try_from(s).ok());
        match salt {
            Some(s) => Ok(s),
            None => field(format!("kdf.salt is not base64 of {SALT_LEN} bytes")),
        }
    }
}

/// What a person enrolled may do on the review page (`docs/review.md`, "Roles"). The server
/// checks the signed-in person's roles on every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Watches, and decides: consent, withdrawal, the teaching library.
    Chair,
    /// Watches recordings.
    Reviewer,
    /// Reads the audit log and the retention report; no video.
    PrivacyOfficer,
    /// Sees the rooms' status; no video.
    ItAdmin,
}

impl Role {
    /// Every role, in the order the page lists them.
    pub const ALL: [Role; 4] = [
        Role::Chair,
        Role::Reviewer,
        Role::PrivacyOfficer,
        Role::ItAdmin,
    ];

    /// The name in files, on the wire and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Chair => "chair",
            Role::Reviewer => "reviewer",
            Role::PrivacyOfficer => "privacy-officer",
            Role::ItAdmin => "it-admin",
        }
    }

    /// The role [`Role::as_str`] names.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether the role watches video, and so its file carries the wrapped department key.
    pub fn watches(self) -> bool {
        matches!(self, Role::Chair | Role::Reviewer)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The roles of a file written before roles existed: it could only watch.
fn reviewer_only() -> Vec<Role> {
    vec![Role::Reviewer]
}

/// Whether any of `roles` watches video.
pub fn watches(roles: &[Role]) -> bool {
    roles.iter().any(|r| r.watches())
}

/// A reviewer file, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewerFile {
    /// [`FORMAT`].
    pub format: String,
    /// The sign-in name.
    pub name: ReviewerName,
    /// The department key the wrapped key is (`KeyId`, 16 hex digits).
    pub department_key_id: String,
    /// When the chair enrolled this reviewer (RFC 3339 UTC).
    pub created_utc: String,
    /// What the person may do; a file without the field is a reviewer's.
    #[serde(default = "reviewer_only")]
    pub roles: Vec<Role>,
    /// How the passphrase is stretched.
    pub kdf: Kdf,
    /// `hex(SHA-256("neoflix-reviewer-v1 verifier" || auth_key))`.
    pub verifier: String,
    /// Base64 of nonce || AES-256-GCM(wrap_key, department secret key), [`WRAPPED_LEN`] bytes;
    /// present exactly when a role watches video ([`Role::watches`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapped_key: Option<String>,
}

impl ReviewerFile {
    /// Parses and checks a reviewer file's bytes (at most [`MAX_FILE_BYTES`]).
    pub fn parse(bytes: &[u8]) -> Result<ReviewerFile, ReviewerError> {
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(ReviewerError::Parse(format!(
                "{} bytes, more than a reviewer file's {MAX_FILE_BYTES}",
                bytes.len()
            )));
        }
        let file: ReviewerFile =
            serde_json::from_slice(bytes).map_err(|e| ReviewerError::Parse(e.to_string()))?;
        file.check()?;
        Ok(file)
    }

    /// Checks every field's form.
    pub fn check(&self) -> Result<(), ReviewerError> {
        let field = |m: String| Err(ReviewerError::Field(m));
        if self.format != FORMAT {
            return field(format!(
                "format {:?}, expected {FORMAT:?}",
                self.format.escape_debug().to_string()
            ));
        }
        if self.department_key_id.len() != 16
            || !self
                .department_key_id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return field("department_key_id is not 16 lowercase hex digits".into());
        }
        if crate::parse_utc(&self.created_utc).is_none() {
            return field("created_utc is not an RFC 3339 UTC time".into());
        }
        self.kdf.check()?;
        if self.verifier_bytes().is_none() {
            return field("verifier is not 64 hex digits".into());
        }
        if self.roles.is_empty() {
            return field(
                "roles is empty: give at least one of chair, reviewer, privacy-officer, it-admin"
                    .into(),
            );
        }
        let mut seen = self.roles.clone();
        seen.sort();
        seen.dedup();
        if seen.len() != self.roles.len() {
            return field("roles names a role twice".into());
        }
        match (&self.wrapped_key, watches(&self.roles)) {
            (Some(_), true) if self.wrapped_bytes().is_none() => {
                field(format!("wrapped_key is not base64 of {WRAPPED_LEN} bytes"))
            }
            (None, true) => field(
                "wrapped_key is missing, but a role (chair, reviewer) watches video: enrol again"
                    .into(),
            ),
            (Some(_), false) => field(
                "wrapped_key is present, but no role watches video: a privacy officer's or IT admin's file carries no department key; enrol again".into(),
            ),
            _ => Ok(()),
        }
    }

    fn verifier_bytes(&self) -> Option<[u8; 32]> {
        hex::decode(&self.verifier)
            .ok()
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
    }

    /// The wrapped key's bytes, if the file has one.
    pub fn wrapped_bytes(&self) -> Option<[u8; WRAPPED_LEN]> {
        B64.decode(self.wrapped_key.as_deref()?)
            .ok()
            .and_then(|v| <[u8; WRAPPED_LEN]>::try_from(v).ok())
    }

    /// Whether the person has `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Whether `auth_key` is the one this reviewer's passphrase gives: compares its verifier in
    /// constant time.
    pub fn check_auth(&self, auth_key: &[u8]) -> bool {
        let Some(stored) = self.verifier_bytes() else {
            return false;
        };
        if auth_key.len() != KEY_LEN {
            return false;
        }
        let given = verifier_of(auth_key);
        // Constant time: a sign-in's timing tells nothing of how much of the verifier matched.
        stored
            .iter()
            .zip(given.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// `SHA-256("neoflix-reviewer-v1 verifier" || auth_key)`.
pub fn verifier_of(auth_key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(VERIFIER_PREFIX);
    h.update(auth_key);
    h.finalize().into()
}

/// The associated data of a wrapped key: `"neoflix-reviewer-v1" 0x00 name 0x00 key id 0x00 salt`.
pub fn wrap_aad(name: &ReviewerName, department_key_id: &str, salt: &[u8; SALT_LEN]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(64 + name.as_str().len());
    aad.extend_from_slice(FORMAT.as_bytes());
    aad.push(0);
    aad.extend_from_slice(name.as_str().as_bytes());
    aad.push(0);
    aad.extend_from_slice(department_key_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(salt);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ReviewerFile {
        ReviewerFile {
            format: FORMAT.into(),
            name: ReviewerName::parse("alice").unwrap(),
            department_key_id: "0123456789abcdef".into(),
            created_utc: "2026-11-28T10:15:02.120Z".into(),
            roles: vec![Role::Reviewer],
            kdf: Kdf::recommended(&[7; SALT_LEN]),
            verifier: hex::encode(verifier_of(&[1; KEY_LEN])),
            wrapped_key: Some(B64.encode([2; WRAPPED_LEN])),
        }
    }

    #[test]
    fn a_good_file_round_trips_and_checks_its_auth_key() {
        let f = sample();
        let bytes = serde_json::to_vec(&f).unwrap();
        let back = ReviewerFile::parse(&bytes).unwrap();
        assert_eq!(back, f);
        assert!(back.check_auth(&[1; KEY_LEN]));
        assert!(!back.check_auth(&[2; KEY_LEN]));
        assert!(!back.check_auth(&[1; 31]));
        assert!(!back.check_auth(&[]));
    }

    #[test]
    fn each_bad_field_is_named() {
        type Spoil = fn(&mut ReviewerFile);
        let cases: Vec<(Spoil, &str)> = vec![
            (|f| f.format = "x".into(), "format"),
            (|f| f.department_key_id = "XYZ".into(), "department_key_id"),
            (|f| f.created_utc = "yesterday".into(), "created_utc"),
            (|f| f.kdf.algorithm = "scrypt".into(), "argon2id"),
            (|f| f.kdf.memory_kib = 1024, "kdf.memory_kib"),
            (|f| f.kdf.iterations = 1, "kdf.iterations"),
            (|f| f.kdf.parallelism = 64, "kdf.parallelism"),
            (|f| f.kdf.salt = "AAAA".into(), "kdf.salt"),
            (|f| f.verifier = "00".into(), "verifier"),
            (|f| f.wrapped_key = Some("AAAA".into()), "wrapped_key"),
            (|f| f.wrapped_key = None, "wrapped_key is missing"),
            (|f| f.roles = vec![Role::PrivacyOfficer], "no role watches"),
            (|f| f.roles = vec![], "roles is empty"),
            (|f| f.roles = vec![Role::Chair, Role::Chair], "twice"),
        ];
        for (spoil, named) in cases {
            let mut f = sample();
            spoil(&mut f);
            let e = ReviewerFile::parse(&serde_json::to_vec(&f).unwrap()).unwrap_err();
            assert!(e.to_string().contains(named), "{named}: {e}");
        }
    }

    #[test]
    fn roles_read_by_name_and_a_file_without_them_is_a_reviewers() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
        assert_eq!(Role::parse("admin"), None);
        let mut v = serde_json::to_value(sample()).unwrap();
        v.as_object_mut().unwrap().remove("roles");
        let f = ReviewerFile::parse(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(f.roles, vec![Role::Reviewer]);
        let mut officer = sample();
        officer.roles = vec![Role::PrivacyOfficer, Role::ItAdmin];
        officer.wrapped_key = None;
        let text = serde_json::to_string(&officer).unwrap();
        assert!(!text.contains("wrapped_key"), "{text}");
        let back = ReviewerFile::parse(text.as_bytes()).unwrap();
        assert!(back.has(Role::ItAdmin) && !back.has(Role::Chair));
        assert!(back.wrapped_bytes().is_none());
        v["roles"] = serde_json::json!(["owner"]);
        assert!(ReviewerFile::parse(&serde_json::to_vec(&v).unwrap()).is_err());
    }

    #[test]
    fn names_outside_the_alphabet_unknown_fields_and_huge_files_are_refused() {
        for bad in ["", ".hidden", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(ReviewerName::parse(bad).is_err(), "{bad:?}");
        }
        let mut v = serde_json::to_value(sample()).unwrap();
        v["extra"] = 1.into();
        assert!(ReviewerFile::parse(&serde_json::to_vec(&v).unwrap()).is_err());
        let mut v = serde_json::to_value(sample()).unwrap();
        v["name"] = "../etc".into();
        assert!(ReviewerFile::parse(&serde_json::to_vec(&v).unwrap()).is_err());
        assert!(ReviewerFile::parse(&vec![b' '; 17 * 1024]).is_err());
        assert!(ReviewerFile::parse(b"\xff\xfe").is_err());
    }

    #[test]
    fn the_associated_data_separates_name_key_and_salt() {
        let a = ReviewerName::parse("ab").unwrap();
        let b = ReviewerName::parse("a").unwrap();
        assert_ne!(
            wrap_aad(&a, "0123456789abcdef", &[0; 16]),
            wrap_aad(&b, "b0123456789abcde", &[0; 16])
        );
    }
}
