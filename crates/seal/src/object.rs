//! The sealed object: a fixed 56-byte header followed by AES-256-GCM STREAM chunks.

use aead_stream::{DecryptorBE32, EncryptorBE32};
use aes_gcm::{Aes256Gcm, KeyInit};

use crate::{DataKey, SealError};

/// Magic bytes at the start of every sealed object.
pub const MAGIC: &[u8; 4] = b"NFXS";
/// The one format version this crate writes and reads.
pub const VERSION: u8 = 1;
/// Length of the header, which is also the associated data of every chunk.
pub const HEADER_LEN: usize = 56;
/// Plaintext bytes per STREAM chunk; each chunk adds a 16-byte tag.
pub const CHUNK_SIZE: u32 = 64 * 1024;
/// The most plaintext one object may hold: 1 GiB, far above a 10-second fragment at any bitrate
/// a room box encodes. A header announcing more is refused before anything is sized from it.
pub const MAX_PLAINTEXT_LEN: u64 = 1 << 30;
const TAG_LEN: u64 = 16;
const NONCE_PREFIX_LEN: usize = 7;

/// What a sealed object holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// An fMP4 init segment (`ftyp` + `moov`).
    Init,
    /// An fMP4 media fragment (`moof` + `mdat`).
    Fragment,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Init => 1,
            Kind::Fragment => 2,
        }
    }
}

/// The identity of a sealed object, bound into every chunk and into its wrapped key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjectId {
    /// Random id of the capture stream (one per pipeline run) the object came from.
    pub stream: [u8; 16],
    /// Position of the object within its stream.
    pub seq: u64,
    /// Init segment or fragment.
    pub kind: Kind,
}

/// A parsed sealed-object header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Which object this is.
    pub id: ObjectId,
    /// Plaintext length in bytes.
    pub plaintext_len: u64,
    /// The raw header bytes, used as associated data.
    pub raw: [u8; HEADER_LEN],
}

impl Header {
    /// Total sealed length implied by the header; an error when the announced plaintext length
    /// is beyond [`MAX_PLAINTEXT_LEN`] (the header's fields are outside data: the sum must not wrap).
    pub fn sealed_len(&self) -> Result<u64, SealError> {
        let oversized = SealError::Oversized {
            plaintext_len: self.plaintext_len,
            max: MAX_PLAINTEXT_LEN,
        };
        if self.plaintext_len > MAX_PLAINTEXT_LEN {
            return Err(oversized);
        }
        chunk_count(self.plaintext_len)
            .checked_mul(TAG_LEN)
            .and_then(|tags| tags.checked_add(self.plaintext_len))
            .and_then(|n| n.checked_add(HEADER_LEN as u64))
            .ok_or(oversized)
    }

    fn nonce_prefix(&self) -> [u8; NONCE_PREFIX_LEN] {
        let mut p = [0; NONCE_PREFIX_LEN];
        p.copy_from_slice(&self.raw[44..44 + NONCE_PREFIX_LEN]);
        p
    }
}

fn chunk_count(plaintext_len: u64) -> u64 {
    // An empty object still has one (last) chunk, so that it carries a tag.
    plaintext_len.div_ceil(u64::from(CHUNK_SIZE)).max(1)
}

/// Seals `plaintext` under a fresh random data key; returns the key (RAM only) and the sealed bytes.
pub fn seal(id: &ObjectId, plaintext: &[u8]) -> Result<(DataKey, Vec<u8>), SealError> {
    // Readers refuse larger objects, so writing one would only make video nobody can open.
    if plaintext.len() as u64 > MAX_PLAINTEXT_LEN {
        return Err(SealError::TooLarge);
    }
    let key = DataKey::generate()?;
    let mut prefix = [0u8; NONCE_PREFIX_LEN];
    getrandom::fill(&mut prefix).map_err(|e| SealError::Random(e.to_string()))?;

    let mut raw = [0u8; HEADER_LEN];
    raw[0..4].copy_from_slice(MAGIC);
    raw[4] = VERSION;
    raw[5] = id.kind.byte();
    raw[8..24].copy_from_slice(&id.stream);
    raw[24..32].copy_from_slice(&id.seq.to_be_bytes());
    raw[32..40].copy_from_slice(&(plaintext.len() as u64).to_be_bytes());
    raw[40..44].copy_from_slice(&CHUNK_SIZE.to_be_bytes());
    raw[44..44 + NONCE_PREFIX_LEN].copy_from_slice(&prefix);

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

fn aead_payload<'m, 'a>(msg: &'m [u8], aad: &'a [u8]) -> aes_gcm::aead::Payload<'m, 'a> {
    aes_gcm::aead::Payload { msg, aad }
}

/// Parses and checks the header of a sealed object without any key.
pub fn parse_header(sealed: &[u8]) -> Result<Header, SealError> {
    if sealed.len() < HEADER_LEN {
        return Err(SealError::BadHeader("shorter than the 56-byte header"));
    }
    if &sealed[0..4] != MAGIC {
        return Err(SealError::BadHeader("wrong magic (expected NFXS)"));
    }
    if sealed[4] != VERSION {
        return Err(SealError::UnsupportedVersion(sealed[4]));
    }
    let kind = match sealed[5] {
        1 => Kind::Init,
        2 => Kind::Fragment,
        _ => return Err(SealError::BadHeader("unknown object kind")),
    };
    let chunk = u32::from_be_bytes(sealed[40..44].try_into().expect("4 bytes"));
    if chunk != CHUNK_SIZE {
        return Err(SealError::BadHeader("unsupported chunk size"));
    }
    let mut raw = [0u8; HEADER_LEN];
    raw.copy_from_slice(&sealed[..HEADER_LEN]);
    let mut stream = [0u8; 16];
    stream.copy_from_slice(&raw[8..24]);
    let header = Header {
        id: ObjectId {
            stream,
            seq: u64::from_be_bytes(raw[24..32].try_into().expect("8 bytes")),
            kind,
        },
        plaintext_len: u64::from_be_bytes(raw[32..40].try_into().expect("8 bytes")),
        raw,
    };
    // A header whose sizes cannot be computed is refused here, so no caller ever sees one.
    header.sealed_len()?;
    Ok(header)
}

/// Opens a sealed object: checks its header, its length and every chunk's tag.
pub fn open(key: &DataKey, sealed: &[u8]) -> Result<(Header, Vec<u8>), SealError> {
    let header = parse_header(sealed)?;
    let expected = header.sealed_len()?;
    if expected != sealed.len() as u64 {
        return Err(SealError::Length {
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
        return Err(SealError::BadHeader(
            "chunk count does not match the announced length",
        ));
    }
    let (last, rest) = pieces
        .split_last()
        .ok_or(SealError::BadHeader("no chunks after the header"))?;
    // Sized by the bytes actually present, never by what the header announces.
    let mut out = Vec::with_capacity(body.len());
    for (i, piece) in rest.iter().enumerate() {
        let pt = dec
            .decrypt_next(aead_payload(piece, &header.raw))
            .map_err(|_| SealError::Tampered { chunk: i as u64 })?;
        out.extend_from_slice(&pt);
    }
    let pt = dec
        .decrypt_last(aead_payload(last, &header.raw))
        .map_err(|_| SealError::Tampered {
            chunk: rest.len() as u64,
        })?;
    out.extend_from_slice(&pt);
    Ok((header, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u64) -> ObjectId {
        ObjectId {
            stream: [1; 16],
            seq,
            kind: Kind::Fragment,
        }
    }

    #[test]
    fn round_trips_every_size_around_chunk_boundaries() {
        for len in [0usize, 1, 65535, 65536, 65537, 3 * 65536, 200_000] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let (key, sealed) = seal(&id(9), &plain).unwrap();
            assert_eq!(
                parse_header(&sealed).unwrap().sealed_len().unwrap(),
                sealed.len() as u64
            );
            let (h, back) = open(&key, &sealed).unwrap();
            assert_eq!(h.id, id(9));
            assert_eq!(back, plain, "len {len}");
        }
    }

    #[test]
    fn ciphertext_does_not_contain_plaintext() {
        let plain = b"ftypisom....moof....mfhd".repeat(1000);
        let (_, sealed) = seal(&id(1), &plain).unwrap();
        assert!(!sealed.windows(4).any(|w| w == b"ftyp" || w == b"moof"));
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let plain = vec![0x42u8; 70_000];
        let (key, sealed) = seal(&id(2), &plain).unwrap();
        for pos in [0, 5, 30, 44, 56, 60_000, 65_600, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[pos] ^= 1;
            assert!(open(&key, &bad).is_err(), "flip at {pos} went unnoticed");
        }
    }

    #[test]
    fn truncation_and_extension_are_detected() {
        let (key, sealed) = seal(&id(3), &[7u8; 140_000]).unwrap();
        // Cut exactly at a chunk boundary: the STREAM last-chunk flag is what catches this one.
        let cut = HEADER_LEN + 65536 + 16;
        assert!(matches!(
            open(&key, &sealed[..cut]),
            Err(SealError::Length { .. })
        ));
        let mut longer = sealed.clone();
        longer.extend_from_slice(&[0; 16]);
        assert!(open(&key, &longer).is_err());
    }

    #[test]
    fn chunk_boundary_truncation_fails_authentication_even_with_a_forged_length() {
        let (key, sealed) = seal(&id(3), &[7u8; 140_000]).unwrap();
        let cut = HEADER_LEN + 2 * (65536 + 16);
        let mut forged = sealed[..cut].to_vec();
        forged[32..40].copy_from_slice(&(2u64 * 65536).to_be_bytes());
        assert!(matches!(
            open(&key, &forged),
            Err(SealError::Tampered { .. })
        ));
    }

    #[test]
    fn swapped_chunks_are_detected() {
        let (key, sealed) = seal(&id(4), &[9u8; 3 * 65536 + 10]).unwrap();
        let c = 65536 + 16;
        let mut swapped = sealed.clone();
        let (a, b) = (HEADER_LEN, HEADER_LEN + c);
        let first = sealed[a..a + c].to_vec();
        swapped[a..a + c].copy_from_slice(&sealed[b..b + c]);
        swapped[b..b + c].copy_from_slice(&first);
        assert!(matches!(
            open(&key, &swapped),
            Err(SealError::Tampered { chunk: 0 })
        ));
    }

    #[test]
    fn another_objects_key_does_not_open() {
        let (_, sealed) = seal(&id(5), b"hello").unwrap();
        let (other, _) = seal(&id(5), b"hello").unwrap();
        assert!(matches!(
            open(&other, &sealed),
            Err(SealError::Tampered { chunk: 0 })
        ));
    }

    /// Issue 8, item 4: a header announcing 0xfff000fff00100b8 bytes of plaintext in a 272-byte
    /// object made the unchecked size arithmetic wrap to exactly 272, and opening then asked the
    /// allocator for that many bytes (a panic, exit 101).
    #[test]
    fn a_length_that_wraps_the_sealed_size_is_refused_before_any_allocation() {
        let (key, mut sealed) = seal(&id(7), &[1u8; 200]).unwrap();
        assert_eq!(sealed.len(), 272);
        sealed[32..40].copy_from_slice(&0xfff0_00ff_f001_00b8u64.to_be_bytes());
        let err = open(&key, &sealed).unwrap_err();
        assert!(err.to_string().contains("plaintext"), "{err}");
        assert!(matches!(
            parse_header(&sealed),
            Err(SealError::Oversized {
                plaintext_len: 0xfff0_00ff_f001_00b8,
                max: MAX_PLAINTEXT_LEN
            })
        ));
        // Lengths just past the limit, and the largest the field can hold, are refused the same
        // way; the limit itself still computes.
        for len in [MAX_PLAINTEXT_LEN + 1, u64::MAX - 55, u64::MAX] {
            sealed[32..40].copy_from_slice(&len.to_be_bytes());
            assert!(matches!(
                open(&key, &sealed),
                Err(SealError::Oversized { .. })
            ));
        }
        sealed[32..40].copy_from_slice(&MAX_PLAINTEXT_LEN.to_be_bytes());
        let h = parse_header(&sealed).unwrap();
        assert_eq!(
            h.sealed_len().unwrap(),
            HEADER_LEN as u64 + MAX_PLAINTEXT_LEN + 16 * (MAX_PLAINTEXT_LEN / 65536)
        );
        assert!(matches!(
            open(&key, &sealed),
            Err(SealError::Length { found: 272, .. })
        ));
    }

    #[test]
    fn garbage_headers_are_named() {
        assert!(matches!(
            parse_header(b"short"),
            Err(SealError::BadHeader(_))
        ));
        assert!(matches!(
            parse_header(&[0u8; 80]),
            Err(SealError::BadHeader(_))
        ));
        let (_, mut sealed) = seal(&id(6), b"x").unwrap();
        sealed[4] = 9;
        assert!(matches!(
            parse_header(&sealed),
            Err(SealError::UnsupportedVersion(9))
        ));
    }
}

#[cfg(test)]
mod robustness {
    use super::*;
    use crate::{DepartmentSecretKey, WrappedKey};

    /// Deterministic xorshift, so a failure reproduces.
    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    /// Outside input (files on disk) never panics the parsers: random bytes and random
    /// mutations of valid objects and key records only ever give errors.
    #[test]
    fn random_and_mutated_input_gives_errors_not_panics() {
        let dept = DepartmentSecretKey::generate().unwrap();
        let id = ObjectId {
            stream: [5; 16],
            seq: 1,
            kind: Kind::Fragment,
        };
        let (key, sealed) = seal(&id, &[3u8; 300]).unwrap();
        let wrapped = key.wrap(&dept.public_key(), &sealed).unwrap();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..600 {
            let len = (rng(&mut seed) % 200) as usize;
            let junk: Vec<u8> = (0..len).map(|_| rng(&mut seed) as u8).collect();
            let _ = parse_header(&junk);
            let _ = open(&key, &junk);
            let _ = WrappedKey::from_bytes(&junk);

            let mut s = sealed.clone();
            for _ in 0..1 + rng(&mut seed) % 3 {
                let pos = (rng(&mut seed) as usize) % s.len();
                s[pos] = rng(&mut seed) as u8;
            }
            let cut = (rng(&mut seed) as usize) % (s.len() + 1);
            assert!(open(&key, &s[..cut]).is_err() || cut == s.len());
            // Any announced length, however large, is an error and never an allocation.
            let mut forged = sealed.clone();
            let announced = rng(&mut seed) >> (rng(&mut seed) % 64);
            forged[32..40].copy_from_slice(&announced.to_be_bytes());
            assert!(open(&key, &forged).is_err() || announced == 300);
            let mut w = wrapped.as_bytes().to_vec();
            let pos = (rng(&mut seed) as usize) % w.len();
            w[pos] ^= 1 + (rng(&mut seed) as u8 % 255);
            if let Ok(w) = WrappedKey::from_bytes(&w) {
                assert!(w.unwrap_for(&dept, &sealed).is_err());
            }
        }
    }
}
