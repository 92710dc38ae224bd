//! Data keys and their HPKE wrapping to the department.
//!
//! A wrapped key record is `NFXK` | version 1 | 3 zero bytes | the sealed object's 56-byte header
//! | HPKE encapsulated key (32) | HPKE ciphertext of the data key (32 + 16 tag) = 144 bytes. The
//! object's header is the HPKE associated data, so a key record opens only for the object it was
//! written for: swapping two fragments' key records is detected.

use hpke::{
    Deserializable, OpModeR, OpModeS, Serializable, aead::AesGcm256, kdf::HkdfSha256,
    kem::X25519HkdfSha256,
};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{DepartmentPublicKey, DepartmentSecretKey, HEADER_LEN, SealError, parse_header};

const MAGIC: &[u8; 4] = b"NFXK";
const INFO: &[u8] = b"neoflix key wrap v1";
/// Length of a wrapped key record.
pub const WRAPPED_KEY_LEN: usize = 8 + HEADER_LEN + 32 + 32 + 16;

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

    pub(crate) fn as_array(&self) -> &[u8; 32] {
        &self.0
    }

    /// Wraps this key to the department for the sealed object `sealed` (only its header is read).
    pub fn wrap(&self, to: &DepartmentPublicKey, sealed: &[u8]) -> Result<WrappedKey, SealError> {
        let header = parse_header(sealed)?;
        let (enc, ct) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
            &OpModeS::Base,
            &to.0,
            INFO,
            &self.0,
            &header.raw,
        )
        .map_err(|_| SealError::Unwrap)?;
        let mut out = Vec::with_capacity(WRAPPED_KEY_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[1, 0, 0, 0]);
        out.extend_from_slice(&header.raw);
        out.extend_from_slice(&enc.to_bytes());
        out.extend_from_slice(&ct);
        debug_assert_eq!(out.len(), WRAPPED_KEY_LEN);
        Ok(WrappedKey(out))
    }
}

/// A data key wrapped to the department: safe to store and send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey(Vec<u8>);

impl WrappedKey {
    /// The record's bytes, as stored in a recording's key log.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Parses a stored record (checks its shape, not its authenticity).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        if bytes.len() != WRAPPED_KEY_LEN {
            return Err(SealError::BadWrappedKey(
                "wrong length (expected 144 bytes)",
            ));
        }
        if &bytes[0..4] != MAGIC || bytes[4] != 1 {
            return Err(SealError::BadWrappedKey("wrong magic or version"));
        }
        // Reserved bytes are not authenticated: insisting on zeros keeps records non-malleable.
        if bytes[5..8] != [0, 0, 0] {
            return Err(SealError::BadWrappedKey("reserved bytes are not zero"));
        }
        Ok(Self(bytes.to_vec()))
    }

    /// The header of the object this record was written for.
    pub fn object_header(&self) -> &[u8] {
        &self.0[8..8 + HEADER_LEN]
    }

    /// Unwraps the data key of the sealed object `sealed` with the department's secret key.
    pub fn unwrap_for(
        &self,
        dept: &DepartmentSecretKey,
        sealed: &[u8],
    ) -> Result<DataKey, SealError> {
        let header = parse_header(sealed)?;
        if self.object_header() != header.raw {
            return Err(SealError::Unwrap);
        }
        let enc_start = 8 + HEADER_LEN;
        let enc = <X25519HkdfSha256 as hpke::Kem>::EncappedKey::from_bytes(
            &self.0[enc_start..enc_start + 32],
        )
        .map_err(|_| SealError::BadWrappedKey("bad encapsulated key"))?;
        let mut pt = hpke::single_shot_open::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
            &OpModeR::Base,
            &dept.0,
            &enc,
            INFO,
            &self.0[enc_start + 32..],
            &header.raw,
        )
        .map_err(|_| SealError::Unwrap)?;
        let mut k = [0u8; 32];
        if pt.len() != 32 {
            pt.zeroize();
            return Err(SealError::Unwrap);
        }
        k.copy_from_slice(&pt);
        pt.zeroize();
        Ok(DataKey(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Kind, ObjectId, open, seal};

    #[test]
    fn wrapped_key_opens_only_its_own_object_with_the_right_department_key() {
        let dept = DepartmentSecretKey::generate().unwrap();
        let other_dept = DepartmentSecretKey::generate().unwrap();
        let mk = |seq| ObjectId {
            stream: [2; 16],
            seq,
            kind: Kind::Fragment,
        };
        let (k1, s1) = seal(&mk(1), b"one").unwrap();
        let (k2, s2) = seal(&mk(2), b"two").unwrap();
        let w1 = k1.wrap(&dept.public_key(), &s1).unwrap();
        let w2 = k2.wrap(&dept.public_key(), &s2).unwrap();
        assert_eq!(w1.as_bytes().len(), WRAPPED_KEY_LEN);
        let back = WrappedKey::from_bytes(w1.as_bytes()).unwrap();
        assert_eq!(
            open(&back.unwrap_for(&dept, &s1).unwrap(), &s1).unwrap().1,
            b"one"
        );
        assert!(matches!(w1.unwrap_for(&dept, &s2), Err(SealError::Unwrap)));
        assert!(matches!(
            w2.unwrap_for(&other_dept, &s2),
            Err(SealError::Unwrap)
        ));
        let mut bad = w2.as_bytes().to_vec();
        bad[WRAPPED_KEY_LEN - 1] ^= 1;
        let bad = WrappedKey::from_bytes(&bad).unwrap();
        assert!(matches!(bad.unwrap_for(&dept, &s2), Err(SealError::Unwrap)));
        assert!(WrappedKey::from_bytes(b"short").is_err());
    }
}
