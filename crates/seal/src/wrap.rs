//! Data keys and their HPKE wrapping to the department.
//!
//! A key record (layout in `neoflix_format::key_record`) holds the sealed object's 56-byte header,
//! which is also the HPKE associated data, so a record opens only for the object it was written
//! for: swapping two fragments' key records is detected.

use hpke::{OpModeS, Serializable, aead::AesGcm256, kdf::HkdfSha256, kem::X25519HkdfSha256};
use neoflix_format::{WrappedKey, parse_header};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{DepartmentPublicKey, SealError};

/// The HPKE `info` of every key wrap (the opening side uses the same).
pub const INFO: &[u8] = b"neoflix key wrap v1";

/// A 256-bit data key. Lives in RAM only and is zeroized when dropped.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; 32]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    pub(crate) fn generate() -> Result<Self, SealError> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|e| SealError::Random(e.to_string()))?;
        Ok(Self(k))
    }

    /// A data key from its bytes: what the opening side makes of an unwrapped key record.
    pub fn from_array(k: [u8; 32]) -> Self {
        Self(k)
    }

    /// The key's bytes, for the cipher.
    pub fn as_array(&self) -> &[u8; 32] {
        &self.0
    }

    /// Wraps this key to the department for the sealed object `sealed` (only its header is read).
    pub fn wrap(&self, to: &DepartmentPublicKey, sealed: &[u8]) -> Result<WrappedKey, SealError> {
        let header = parse_header(sealed)?;
        let (enc, mut ct) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
            &OpModeS::Base,
            to.hpke(),
            INFO,
            &self.0,
            &header.raw,
        )
        .map_err(|_| SealError::Wrap)?;
        let encapped: [u8; 32] = enc.to_bytes().into();
        let wrapped: [u8; 48] = ct.as_slice().try_into().map_err(|_| SealError::Wrap)?;
        ct.zeroize();
        Ok(WrappedKey::from_parts(&header.raw, &encapped, &wrapped))
    }
}
