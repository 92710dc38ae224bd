//! Marker labels sealed to the department (`docs/sealed-format.md`, "Marker labels"): what a
//! clinician types at the box is text about a patient, so the box never writes it down in clear
//! and the server never reads it. HPKE single-shot, as a key record, with the marker's own
//! associated data.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hpke::{OpModeS, Serializable, aead::AesGcm256, kdf::HkdfSha256, kem::X25519HkdfSha256};
use neoflix_format::manifest::{LABEL_INFO, MAX_LABEL_BYTES, cut_to, label_aad};

use crate::{DepartmentPublicKey, SealError};

/// Seals `label` (cut to [`MAX_LABEL_BYTES`]) for the marker at `utc` of `recording_id`:
/// base64 of the encapsulated key and the ciphertext, as `Marker::sealed_label` holds it.
pub fn seal_label(
    to: &DepartmentPublicKey,
    recording_id: &str,
    utc: &str,
    label: &str,
) -> Result<String, SealError> {
    let label = cut_to(label, MAX_LABEL_BYTES);
    let (enc, ct) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
        &OpModeS::Base,
        to.hpke(),
        LABEL_INFO,
        label.as_bytes(),
        &label_aad(recording_id, utc),
    )
    .map_err(|_| SealError::Wrap)?;
    let mut out = enc.to_bytes().to_vec();
    out.extend_from_slice(&ct);
    Ok(B64.encode(out))
}
