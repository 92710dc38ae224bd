//! Sealing one object: a fresh data key, the header, AES-256-GCM STREAM chunks.

use aead_stream::EncryptorBE32;
use aes_gcm::{Aes256Gcm, KeyInit};
use neoflix_format::object::{NONCE_PREFIX_LEN, TAG_LEN, chunk_count};
use neoflix_format::{CHUNK_SIZE, HEADER_LEN, Header, MAX_PLAINTEXT_LEN, ObjectId};

use crate::{DataKey, SealError};

/// Seals `plaintext` under a fresh random data key; returns the key (RAM only) and the sealed bytes.
pub fn seal(id: &ObjectId, plaintext: &[u8]) -> Result<(DataKey, Vec<u8>), SealError> {
    // Readers refuse larger objects, so writing one would only make video nobody can open.
    if plaintext.len() as u64 > MAX_PLAINTEXT_LEN {
        return Err(SealError::TooLarge);
    }
    let key = DataKey::generate()?;
    let mut prefix = [0u8; NONCE_PREFIX_LEN];
    getrandom::fill(&mut prefix).map_err(|e| SealError::Random(e.to_string()))?;

    let raw = Header::new(id, plaintext.len() as u64, prefix).raw;

    let cipher = Aes256Gcm::new(key.as_array().into());
    let mut enc = EncryptorBE32::from_aead(cipher, &prefix.into());
    let chunks = chunk_count(plaintext.len() as u64) as usize;
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + chunks * TAG_LEN as usize);
    out.extend_from_slice(&raw);
    let mut pieces = plaintext.chunks(CHUNK_SIZE as usize).peekable();
    if pieces.peek().is_none() {
        let ct = enc
            .encrypt_last(aead_payload(&[], &raw))
            .map_err(|_| SealError::TooLarge)?;
        out.extend_from_slice(&ct);
        return Ok((key, out));
    }
    while let Some(piece) = pieces.next() {
        if pieces.peek().is_some() {
            let ct = enc
                .encrypt_next(aead_payload(piece, &raw))
                .map_err(|_| SealError::TooLarge)?;
            out.extend_from_slice(&ct);
        } else {
            let ct = enc
                .encrypt_last(aead_payload(piece, &raw))
                .map_err(|_| SealError::TooLarge)?;
            out.extend_from_slice(&ct);
            break;
        }
    }
    Ok((key, out))
}

pub(crate) fn aead_payload<'m, 'a>(msg: &'m [u8], aad: &'a [u8]) -> aes_gcm::aead::Payload<'m, 'a> {
    aes_gcm::aead::Payload { msg, aad }
}
