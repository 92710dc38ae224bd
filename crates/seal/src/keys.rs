//! The department key pair (X25519) and its text file format.
//!
//! Files are one line: `neoflix-department-public-key-v1 <64 hex digits>` for the public key and
//! `neoflix-department-secret-key-v1 <64 hex digits>` for the secret key, so an operator can tell
//! them apart with `cat` and a mistake (the secret key given where the public one belongs) is
//! refused with a clear message instead of silently working.

use hpke::{Deserializable, Kem as _, Serializable, kem::X25519HkdfSha256};
use zeroize::Zeroizing;

use crate::SealError;

const PUB_TAG: &str = "neoflix-department-public-key-v1";
const SEC_TAG: &str = "neoflix-department-secret-key-v1";

/// Short identifier of a department public key: the first 16 hex digits of its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyId(pub String);

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The department's public key: every room box holds it and wraps data keys to it.
#[derive(Clone, PartialEq, Eq)]
pub struct DepartmentPublicKey(pub(crate) <X25519HkdfSha256 as hpke::Kem>::PublicKey);

/// The department's secret key: never on a room box; opens recordings at export.
#[derive(Clone)]
pub struct DepartmentSecretKey(pub(crate) <X25519HkdfSha256 as hpke::Kem>::PrivateKey);

impl std::fmt::Debug for DepartmentPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DepartmentPublicKey({})", self.key_id())
    }
}

impl std::fmt::Debug for DepartmentSecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DepartmentSecretKey(..)")
    }
}

impl DepartmentPublicKey {
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

impl DepartmentSecretKey {
    /// Generates a fresh key pair from the operating system's randomness.
    pub fn generate() -> Result<Self, SealError> {
        let mut ikm = Zeroizing::new([0u8; 32]);
        getrandom::fill(ikm.as_mut()).map_err(|e| SealError::Random(e.to_string()))?;
        let (sk, _) = X25519HkdfSha256::derive_keypair(ikm.as_ref());
        Ok(Self(sk))
    }

    /// The matching public key.
    pub fn public_key(&self) -> DepartmentPublicKey {
        DepartmentPublicKey(X25519HkdfSha256::sk_to_pk(&self.0))
    }

    /// The key file's text (secret: write it with mode 0600).
    pub fn to_file_text(&self) -> Zeroizing<String> {
        let bytes: Zeroizing<[u8; 32]> = Zeroizing::new(self.0.to_bytes().into());
        Zeroizing::new(format!("{SEC_TAG} {}\n", hex::encode(bytes.as_ref())))
    }

    /// Parses a secret key file's text.
    pub fn from_file_text(text: &str) -> Result<Self, SealError> {
        let bytes = parse_line(
            text,
            SEC_TAG,
            PUB_TAG,
            "this is the department PUBLIC key; export needs the secret key (department.key)",
        )?;
        <X25519HkdfSha256 as hpke::Kem>::PrivateKey::from_bytes(&bytes[..])
            .map(Self)
            .map_err(|_| SealError::BadKey("not a valid X25519 secret key".into()))
    }
}

fn parse_line(
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
    fn key_files_round_trip_and_are_told_apart() {
        let sk = DepartmentSecretKey::generate().unwrap();
        let pk = sk.public_key();
        let pk2 = DepartmentPublicKey::from_file_text(&pk.to_file_text()).unwrap();
        assert_eq!(pk, pk2);
        let sk2 = DepartmentSecretKey::from_file_text(&sk.to_file_text()).unwrap();
        assert_eq!(sk2.public_key(), pk);
        let err = DepartmentPublicKey::from_file_text(&sk.to_file_text()).unwrap_err();
        assert!(err.to_string().contains("SECRET"), "{err}");
        let err = DepartmentSecretKey::from_file_text(&pk.to_file_text()).unwrap_err();
        assert!(err.to_string().contains("PUBLIC"), "{err}");
        assert!(DepartmentPublicKey::from_file_text("garbage").is_err());
        assert!(DepartmentPublicKey::from_file_text(&format!("{PUB_TAG} abcd")).is_err());
        assert_eq!(pk.key_id().0.len(), 16);
    }
}
