//! The department public key (X25519) and the text file format of both department keys.
//!
//! Files are one line: `neoflix-department-public-key-v1 <64 hex digits>` for the public key and
//! `neoflix-department-secret-key-v1 <64 hex digits>` for the secret key, so an operator can tell
//! them apart with `cat` and a mistake (the secret key given where the public one belongs) is
//! refused with a clear message instead of silently working.

use hpke::{Deserializable, Serializable, kem::X25519HkdfSha256};
use zeroize::Zeroizing;

use crate::SealError;
pub use neoflix_format::KeyId;

/// The first word of a department public key file.
pub const PUB_TAG: &str = "neoflix-department-public-key-v1";
/// The first word of a department secret key file (written and read by `neoflix-open`).
pub const SEC_TAG: &str = "neoflix-department-secret-key-v1";

/// The department's public key: every room box holds it and wraps data keys to it.
#[derive(Clone, PartialEq, Eq)]
pub struct DepartmentPublicKey(<X25519HkdfSha256 as hpke::Kem>::PublicKey);

impl std::fmt::Debug for DepartmentPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DepartmentPublicKey({})", self.key_id())
    }
}

impl DepartmentPublicKey {
    /// A public key from its 32 bytes (the opening side derives it from the secret key).
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, SealError> {
        <X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(bytes)
            .map(Self)
            .map_err(|_| SealError::BadKey("not a valid X25519 public key".into()))
    }

    pub(crate) fn hpke(&self) -> &<X25519HkdfSha256 as hpke::Kem>::PublicKey {
        &self.0
    }

    /// Raw 32-byte X25519 public key.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes().into()
    }

    /// The key's short identifier, written into every manifest.
    pub fn key_id(&self) -> KeyId {
        KeyId(crate::sha256_hex(&self.to_bytes())[..16].to_string())
    }

    /// The key file's text.
    pub fn to_file_text(&self) -> String {
        format!("{PUB_TAG} {}\n", hex::encode(self.to_bytes()))
    }

    /// Parses a public key file's text.
    pub fn from_file_text(text: &str) -> Result<Self, SealError> {
        let bytes = parse_line(
            text,
            PUB_TAG,
            SEC_TAG,
            "a department SECRET key was given where the public key belongs",
        )?;
        <X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(&bytes[..])
            .map(Self)
            .map_err(|_| SealError::BadKey("not a valid X25519 public key".into()))
    }
}

/// Parses a one-line key file `<tag> <64 hex digits>`; `other_tag` (the other key of the pair)
/// is refused with `other_msg`.
pub fn parse_line(
    text: &str,
    tag: &str,
    other_tag: &str,
    other_msg: &str,
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let line = text.trim();
    let (t, hexed) = line
        .split_once(' ')
        .ok_or_else(|| SealError::BadKey(format!("expected one line '{tag} <64 hex digits>'")))?;
    if t == other_tag {
        return Err(SealError::BadKey(other_msg.into()));
    }
    if t != tag {
        return Err(SealError::BadKey(format!(
            "expected the line to start with '{tag}', found '{}'",
            t.chars().take(40).collect::<String>()
        )));
    }
    let bytes = Zeroizing::new(
        hex::decode(hexed.trim())
            .map_err(|_| SealError::BadKey("the key is not valid hex".into()))?,
    );
    if bytes.len() != 32 {
        return Err(SealError::BadKey(format!(
            "the key has {} bytes, expected 32",
            bytes.len()
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_files_round_trip_and_a_secret_key_is_refused() {
        let pk = DepartmentPublicKey::from_bytes(&[9; 32]).unwrap();
        let back = DepartmentPublicKey::from_file_text(&pk.to_file_text()).unwrap();
        assert_eq!(back, pk);
        assert_eq!(pk.key_id().0.len(), 16);
        let secret = format!(
            "{SEC_TAG} {}
",
            "11".repeat(32)
        );
        let err = DepartmentPublicKey::from_file_text(&secret).unwrap_err();
        assert!(err.to_string().contains("SECRET"), "{err}");
        assert!(DepartmentPublicKey::from_file_text("garbage").is_err());
        assert!(DepartmentPublicKey::from_file_text(&format!("{PUB_TAG} abcd")).is_err());
    }
}
