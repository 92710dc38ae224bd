//! The department secret key in the tab's memory, and opening one sealed object with it after
//! checking the object against its place in the manifest.

use neoflix_format::{Kind, WrappedKey, parse_header};
use neoflix_open::{DepartmentSecretKey, open, unwrap};
use sha2::{Digest, Sha256};

use crate::WebError;

/// What the manifest says an object is: checked before and after it opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Init segment or fragment, from the manifest list the object is in.
    pub kind: Kind,
    /// The manifest's SHA-256 of the sealed bytes (hex).
    pub sha256: String,
    /// The manifest's SHA-256 of the key record (hex).
    pub key_sha256: String,
    /// For a fragment, the capture stream of its init segment (hex of 16 bytes), when known: a
    /// fragment decodes only with its own stream's init segment.
    pub stream: Option<String>,
}

/// An object that opened, with what its (now authenticated) header says.
#[derive(Debug)]
pub struct Opened {
    /// The capture stream the object belongs to, hex.
    pub stream: String,
    /// Its sequence number within the stream.
    pub seq: u64,
    /// The plaintext: an fMP4 init segment or a `moof`+`mdat` fragment.
    pub plain: Vec<u8>,
}

/// The department secret key, unlocked in this tab. Dropping it forgets the key: the secret
/// key type zeroizes its bytes when dropped (the HPKE crate's X25519 key does).
#[derive(Debug)]
pub struct Keyring {
    /// Opens every key record of a recording sealed to this department.
    dept: DepartmentSecretKey,
    /// Which department key this is, to name it in errors and compare with manifests.
    key_id: String,
}

impl Keyring {
    /// A keyring around an unlocked department key.
    pub fn new(dept: DepartmentSecretKey) -> Keyring {
        let key_id = dept.public_key().key_id().0;
        Keyring { dept, key_id }
    }

    /// The department key's id (16 hex digits), as written in manifests.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Opens a marker's sealed label (see `neoflix_open::open_label`).
    pub fn open_label(
        &self,
        recording_id: &str,
        utc: &str,
        sealed_label: &str,
    ) -> Result<String, WebError> {
        Ok(neoflix_open::open_label(
            &self.dept,
            recording_id,
            utc,
            sealed_label,
        )?)
    }

    /// Checks the sealed bytes and the key record against the manifest's digests, unwraps the
    /// data key, opens the object (every chunk authenticated) and checks that its header is
    /// what the manifest's place for it says.
    pub fn open(
        &self,
        expected: &Expected,
        sealed: &[u8],
        key_record: &[u8],
    ) -> Result<Opened, WebError> {
        // The server could hand out any bytes: the manifest's digests are what the room box
        // signed and the server checked at upload.
        check_digest("sealed object", sealed, &expected.sha256)?;
        check_digest("key record", key_record, &expected.key_sha256)?;
        let header = parse_header(sealed)?;
        if header.id.kind != expected.kind {
            return Err(WebError::Misplaced(format!(
                "the manifest lists it as {}, its header says {}",
                kind_name(expected.kind),
                kind_name(header.id.kind)
            )));
        }
        let record = WrappedKey::from_bytes(key_record)?;
        let key = unwrap(&record, &self.dept, sealed)?;
        let (header, plain) = open(&key, sealed)?;
        let stream = hex::encode(header.id.stream);
        if let Some(want) = &expected.stream
            && !want.eq_ignore_ascii_case(&stream)
        {
            return Err(WebError::Misplaced(format!(
                "it belongs to capture stream {}, its init segment to {}",
                &stream[..8],
                want.get(..8).unwrap_or(want)
            )));
        }
        Ok(Opened {
            stream,
            seq: header.id.seq,
            plain,
        })
    }
}

/// `init` or `fragment`, as the page names a kind.
pub fn parse_kind(kind: &str) -> Result<Kind, WebError> {
    match kind {
        "init" => Ok(Kind::Init),
        "fragment" => Ok(Kind::Fragment),
        other => Err(WebError::Argument(format!(
            "kind {other:?}: use \"init\" or \"fragment\""
        ))),
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Init => "an init segment",
        Kind::Fragment => "a fragment",
    }
}

fn check_digest(what: &'static str, bytes: &[u8], expected: &str) -> Result<(), WebError> {
    let found = hex::encode(Sha256::digest(bytes));
    if found.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(WebError::Digest {
            what,
            expected: expected.to_owned(),
            found,
        })
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use neoflix_format::ObjectId;
    use neoflix_seal::seal;

    struct Sealed {
        sealed: Vec<u8>,
        record: Vec<u8>,
    }

    fn sealed_for(dept: &DepartmentSecretKey, id: ObjectId, plain: &[u8]) -> Sealed {
        let (key, sealed) = seal(&id, plain).unwrap();
        let record = key.wrap(&dept.public_key(), &sealed).unwrap();
        Sealed {
            sealed,
            record: record.as_bytes().to_vec(),
        }
    }

    fn expect(kind: Kind, s: &Sealed, stream: Option<[u8; 16]>) -> Expected {
        Expected {
            kind,
            sha256: hex::encode(Sha256::digest(&s.sealed)),
            key_sha256: hex::encode(Sha256::digest(&s.record)),
            stream: stream.map(hex::encode),
        }
    }

    fn id(stream: u8, seq: u64, kind: Kind) -> ObjectId {
        ObjectId {
            stream: [stream; 16],
            seq,
            kind,
        }
    }

    #[test]
    fn an_object_in_its_place_opens() {
        let dept = DepartmentSecretKey::generate().unwrap();
        let ring = Keyring::new(dept.clone());
        assert_eq!(ring.key_id(), dept.public_key().key_id().0);
        let init = sealed_for(&dept, id(1, 0, Kind::Init), b"ftyp moov");
        let frag = sealed_for(&dept, id(1, 4, Kind::Fragment), b"moof mdat");
        let opened = ring
            .open(&expect(Kind::Init, &init, None), &init.sealed, &init.record)
            .unwrap();
        assert_eq!(opened.plain, b"ftyp moov");
        let got = ring
            .open(
                &expect(Kind::Fragment, &frag, Some([1; 16])),
                &frag.sealed,
                &frag.record,
            )
            .unwrap();
        assert_eq!((got.plain.as_slice(), got.seq), (&b"moof mdat"[..], 4));
        assert_eq!(got.stream, opened.stream);
    }

    #[test]
    fn bytes_other_than_the_manifests_are_refused_before_opening() {
        let dept = DepartmentSecretKey::generate().unwrap();
        let ring = Keyring::new(dept.clone());
        let a = sealed_for(&dept, id(1, 1, Kind::Fragment), b"a");
        let b = sealed_for(&dept, id(1, 2, Kind::Fragment), b"b");
        // The server swaps in another object of the same recording: its digest is not the one
        // listed for this place.
        let err = ring
            .open(&expect(Kind::Fragment, &a, None), &b.sealed, &a.record)
            .unwrap_err();
        assert!(err.to_string().contains("sealed object"), "{err}");
        let err = ring
            .open(&expect(Kind::Fragment, &a, None), &a.sealed, &b.record)
            .unwrap_err();
        assert!(err.to_string().contains("key record"), "{err}");
    }

    #[test]
    fn the_header_must_match_the_manifests_place() {
        let dept = DepartmentSecretKey::generate().unwrap();
        let ring = Keyring::new(dept.clone());
        let init = sealed_for(&dept, id(1, 0, Kind::Init), b"ftyp");
        let err = ring
            .open(
                &expect(Kind::Fragment, &init, None),
                &init.sealed,
                &init.record,
            )
            .unwrap_err();
        assert!(matches!(err, WebError::Misplaced(_)), "{err}");
        let frag = sealed_for(&dept, id(2, 0, Kind::Fragment), b"moof");
        let err = ring
            .open(
                &expect(Kind::Fragment, &frag, Some([1; 16])),
                &frag.sealed,
                &frag.record,
            )
            .unwrap_err();
        assert!(err.to_string().contains("capture stream"), "{err}");
    }

    #[test]
    fn another_departments_key_does_not_open() {
        let dept = DepartmentSecretKey::generate().unwrap();
        let other = Keyring::new(DepartmentSecretKey::generate().unwrap());
        let s = sealed_for(&dept, id(1, 0, Kind::Fragment), b"moof");
        let err = other
            .open(&expect(Kind::Fragment, &s, None), &s.sealed, &s.record)
            .unwrap_err();
        assert!(matches!(err, WebError::Open(_)), "{err}");
    }

    #[test]
    fn kinds_are_named_by_the_page() {
        assert_eq!(parse_kind("init").unwrap(), Kind::Init);
        assert_eq!(parse_kind("fragment").unwrap(), Kind::Fragment);
        assert!(parse_kind("moov").is_err());
    }
}
