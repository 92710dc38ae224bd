//! The opening side of the Neoflix format: the department secret key, unwrapping key records
//! and opening sealed objects. Only review and export link this crate; the room box
//! (`neoflixd`) and the department server (`neoflix-ingest`) do not, and `scripts/test` checks
//! that they cannot (`cargo tree`).
//!
//! ```
//! use neoflix_open::{DepartmentSecretKey, open, unwrap};
//! use neoflix_seal::{Kind, ObjectId, seal};
//! let dept = DepartmentSecretKey::generate().unwrap();
//! let id = ObjectId { stream: [7; 16], seq: 3, kind: Kind::Fragment };
//! let (key, sealed) = seal(&id, b"moof...mdat...").unwrap();
//! let record = key.wrap(&dept.public_key(), &sealed).unwrap();
//! // ... later, at the department, with the secret key:
//! let key = unwrap(&record, &dept, &sealed).unwrap();
//! let (header, plain) = open(&key, &sealed).unwrap();
//! assert_eq!(header.id, id);
//! assert_eq!(plain, b"moof...mdat...");
//! ```
#![deny(missing_docs)]

pub mod reviewer;

use aead_stream::DecryptorBE32;
use aes_gcm::{Aes256Gcm, KeyInit};
use hpke::{
    Deserializable, Kem as _, OpModeR, Serializable, aead::AesGcm256, kdf::HkdfSha256,
    kem::X25519HkdfSha256,
};
use neoflix_format::object::{TAG_LEN, chunk_count};
use neoflix_format::{CHUNK_SIZE, FormatError, HEADER_LEN, Header, WrappedKey, parse_header};
use neoflix_seal::keys::{PUB_TAG, SEC_TAG};
use neoflix_seal::{DataKey, DepartmentPublicKey, SealError};
use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

/// Everything that can go wrong while opening.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Not a sealed object or key record at all (see [`FormatError`]).
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A chunk failed authentication: the ciphertext was changed, truncated, reordered, or the key
    /// belongs to another object.
    #[error(
        "authentication failed at chunk {chunk}: the sealed bytes were altered, cut short or belong to another key"
    )]
    Tampered {
        /// Zero-based index of the chunk that failed.
        chunk: u64,
    },
    /// The object's length does not match what its header announces: truncated or extended.
    #[error("length mismatch: header announces {expected} sealed bytes, found {found}")]
    Length {
        /// Length implied by the header.
        expected: u64,
        /// Length actually present.
        found: u64,
    },
    /// The wrapped key failed to open: wrong department key, or a key record that belongs to a
    /// different object, or one that was altered.
    #[error(
        "the wrapped data key does not open with this department key for this object (wrong key, or key record of another fragment)"
    )]
    Unwrap,
    /// A department key file is malformed.
    #[error("malformed department key: {0}")]
    BadKey(String),
    /// The operating system could not supply random bytes.
    #[error("no randomness available from the operating system: {0}")]
    Random(String),
    /// A reviewer's passphrase does not open their wrapped key (a wrong passphrase, or a wrapped
    /// key copied to another reviewer's name, department key or salt).
    #[error("the passphrase does not open this reviewer's key")]
    Passphrase,
    /// A reviewer file or its parameters cannot be used (names the field).
    #[error("reviewer: {0}")]
    Reviewer(String),
    /// A marker's sealed label does not open with this department key for this marker
    /// (another department, a label moved from another marker, or altered bytes).
    #[error(
        "the marker's label does not open with this department key (another department's, moved from another marker, or altered)"
    )]
    Label,
}

impl From<SealError> for OpenError {
    fn from(e: SealError) -> Self {
        match e {
            SealError::Format(f) => OpenError::Format(f),
            SealError::BadKey(m) => OpenError::BadKey(m),
            SealError::Random(m) => OpenError::Random(m),
            other => OpenError::BadKey(other.to_string()),
        }
    }
}

/// The department's secret key: never on a room box or the ingest server; opens recordings.
#[derive(Clone)]
pub struct DepartmentSecretKey(<X25519HkdfSha256 as hpke::Kem>::PrivateKey);

impl std::fmt::Debug for DepartmentSecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DepartmentSecretKey(..)")
    }
}

impl DepartmentSecretKey {
    /// Generates a fresh key pair from the operating system's randomness.
    pub fn generate() -> Result<Self, OpenError> {
        let mut ikm = Zeroizing::new([0u8; 32]);
        getrandom::fill(ikm.as_mut()).map_err(|e| OpenError::Random(e.to_string()))?;
        let (sk, _) = X25519HkdfSha256::derive_keypair(ikm.as_ref());
        Ok(Self(sk))
    }

    /// The matching public key.
    pub fn public_key(&self) -> DepartmentPublicKey {
        DepartmentPublicKey::from_bytes(&X25519HkdfSha256::sk_to_pk(&self.0).to_bytes().into())
            .expect("a public key derived from a secret key is valid")
    }

    /// The key file's text (secret: write it with mode 0600).
    pub fn to_file_text(&self) -> Zeroizing<String> {
        let bytes: Zeroizing<[u8; 32]> = Zeroizing::new(self.0.to_bytes().into());
        Zeroizing::new(format!("{SEC_TAG} {}\n", hex::encode(bytes.as_ref())))
    }

    /// Parses a secret key file's text.
    pub fn from_file_text(text: &str) -> Result<Self, OpenError> {
        let bytes = neoflix_seal::keys::parse_line(
            text,
            SEC_TAG,
            PUB_TAG,
            "this is the department PUBLIC key; export needs the secret key (department.key)",
        )
        .map_err(OpenError::from)?;
        <X25519HkdfSha256 as hpke::Kem>::PrivateKey::from_bytes(&bytes[..])
            .map(Self)
            .map_err(|_| OpenError::BadKey("not a valid X25519 secret key".into()))
    }
}

/// Unwraps the data key in `record` for the sealed object `sealed` with the department's secret
/// key: fails unless the record was written for this very object and to this department.
pub fn unwrap(
    record: &WrappedKey,
    dept: &DepartmentSecretKey,
    sealed: &[u8],
) -> Result<DataKey, OpenError> {
    let header = parse_header(sealed)?;
    if record.object_header() != header.raw {
        return Err(OpenError::Unwrap);
    }
    let enc = <X25519HkdfSha256 as hpke::Kem>::EncappedKey::from_bytes(record.encapped())
        .map_err(|_| OpenError::Format(FormatError::BadWrappedKey("bad encapsulated key")))?;
    let mut pt = hpke::single_shot_open::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
        &OpModeR::Base,
        &dept.0,
        &enc,
        neoflix_seal::wrap::INFO,
        record.wrapped(),
        &header.raw,
    )
    .map_err(|_| OpenError::Unwrap)?;
    let mut k = [0u8; 32];
    if pt.len() != 32 {
        pt.zeroize();
        return Err(OpenError::Unwrap);
    }
    k.copy_from_slice(&pt);
    pt.zeroize();
    let key = DataKey::from_array(k);
    k.zeroize();
    Ok(key)
}

/// Opens a marker's sealed label (`Marker::sealed_label`) of the marker at `utc` of
/// `recording_id`: fails for another department's key, another recording or marker, or
/// altered bytes.
pub fn open_label(
    dept: &DepartmentSecretKey,
    recording_id: &str,
    utc: &str,
    sealed_label: &str,
) -> Result<String, OpenError> {
    use base64::Engine as _;
    use neoflix_format::manifest::{LABEL_INFO, MAX_SEALED_LABEL_CHARS, label_aad};
    let bad = || OpenError::Format(FormatError::BadWrappedKey("not a sealed label"));
    if sealed_label.len() > MAX_SEALED_LABEL_CHARS {
        return Err(bad());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(sealed_label)
        .map_err(|_| bad())?;
    if bytes.len() < 32 + 16 {
        return Err(bad());
    }
    let (enc, ct) = bytes.split_at(32);
    let enc = <X25519HkdfSha256 as hpke::Kem>::EncappedKey::from_bytes(enc).map_err(|_| bad())?;
    let pt = hpke::single_shot_open::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
        &OpModeR::Base,
        &dept.0,
        &enc,
        LABEL_INFO,
        ct,
        &label_aad(recording_id, utc),
    )
    .map_err(|_| OpenError::Label)?;
    String::from_utf8(pt).map_err(|_| OpenError::Label)
}

/// Opens a sealed object: checks its header, its length and every chunk's tag.
pub fn open(key: &DataKey, sealed: &[u8]) -> Result<(Header, Vec<u8>), OpenError> {
    let header = parse_header(sealed)?;
    let expected = header.sealed_len()?;
    if expected != sealed.len() as u64 {
        return Err(OpenError::Length {
            expected,
            found: sealed.len() as u64,
        });
    }
    let cipher = Aes256Gcm::new(key.as_array().into());
    let prefix = header.nonce_prefix();
    let mut dec = DecryptorBE32::from_aead(cipher, &prefix.into());
    let body = &sealed[HEADER_LEN..];
    let sealed_chunk = CHUNK_SIZE as usize + TAG_LEN as usize;
    let pieces: Vec<&[u8]> = body.chunks(sealed_chunk).collect();
    if pieces.len() as u64 != chunk_count(header.plaintext_len) {
        return Err(OpenError::Format(FormatError::BadHeader(
            "chunk count does not match the announced length",
        )));
    }
    let (last, rest) = pieces
        .split_last()
        .ok_or(OpenError::Format(FormatError::BadHeader(
            "no chunks after the header",
        )))?;
    // Sized by the bytes actually present, never by what the header announces.
    let mut out = Vec::with_capacity(body.len());
    for (i, piece) in rest.iter().enumerate() {
        let pt = dec
            .decrypt_next(aead_payload(piece, &header.raw))
            .map_err(|_| OpenError::Tampered { chunk: i as u64 })?;
        out.extend_from_slice(&pt);
    }
    let pt = dec
        .decrypt_last(aead_payload(last, &header.raw))
        .map_err(|_| OpenError::Tampered {
            chunk: rest.len() as u64,
        })?;
    out.extend_from_slice(&pt);
    Ok((header, out))
}

fn aead_payload<'m, 'a>(msg: &'m [u8], aad: &'a [u8]) -> aes_gcm::aead::Payload<'m, 'a> {
    aes_gcm::aead::Payload { msg, aad }
}

#[cfg(test)]
mod tests;
