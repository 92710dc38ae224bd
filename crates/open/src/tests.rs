//! Round trips and attacks on the sealed format, from both sides. Built for wasm32 they run in
//! headless Chromium (`scripts/test-wasm`): the browser opens recordings with this code.

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

mod objects {
    use crate::*;
    use neoflix_format::{Kind, MAX_PLAINTEXT_LEN, ObjectId};
    use neoflix_seal::seal;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

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
            Err(OpenError::Length { .. })
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
            Err(OpenError::Tampered { .. })
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
            Err(OpenError::Tampered { chunk: 0 })
        ));
    }

    #[test]
    fn another_objects_key_does_not_open() {
        let (_, sealed) = seal(&id(5), b"hello").unwrap();
        let (other, _) = seal(&id(5), b"hello").unwrap();
        assert!(matches!(
            open(&other, &sealed),
            Err(OpenError::Tampered { chunk: 0 })
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
            Err(FormatError::Oversized {
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
                Err(OpenError::Format(FormatError::Oversized { .. }))
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
            Err(OpenError::Length { found: 272, .. })
        ));
    }

    #[test]
    fn garbage_headers_are_named() {
        assert!(matches!(
            parse_header(b"short"),
            Err(FormatError::BadHeader(_))
        ));
        assert!(matches!(
            parse_header(&[0u8; 80]),
            Err(FormatError::BadHeader(_))
        ));
        let (_, mut sealed) = seal(&id(6), b"x").unwrap();
        sealed[4] = 9;
        assert!(matches!(
            parse_header(&sealed),
            Err(FormatError::UnsupportedVersion(9))
        ));
    }
}

mod robustness {
    use crate::*;
    use neoflix_format::{Kind, ObjectId};
    use neoflix_seal::seal;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

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
                assert!(unwrap(&w, &dept, &sealed).is_err());
            }
        }
    }
}

mod wrapping {
    use crate::*;
    use neoflix_format::{Kind, ObjectId, WRAPPED_KEY_LEN};
    use neoflix_seal::seal;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

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
            open(&unwrap(&back, &dept, &s1).unwrap(), &s1).unwrap().1,
            b"one"
        );
        assert!(matches!(unwrap(&w1, &dept, &s2), Err(OpenError::Unwrap)));
        assert!(matches!(
            unwrap(&w2, &other_dept, &s2),
            Err(OpenError::Unwrap)
        ));
        let mut bad = w2.as_bytes().to_vec();
        bad[WRAPPED_KEY_LEN - 1] ^= 1;
        let bad = WrappedKey::from_bytes(&bad).unwrap();
        assert!(matches!(unwrap(&bad, &dept, &s2), Err(OpenError::Unwrap)));
        assert!(WrappedKey::from_bytes(b"short").is_err());
    }

    #[test]
    fn a_sealed_label_opens_only_for_its_marker_with_the_right_department_key() {
        use neoflix_format::manifest::{MAX_LABEL_BYTES, MAX_SEALED_LABEL_CHARS};
        let dept = DepartmentSecretKey::generate().unwrap();
        let other = DepartmentSecretKey::generate().unwrap();
        let (id, utc) = ("room-1-20261129T101500Z", "2026-11-29T10:15:07.250Z");
        let sealed =
            neoflix_seal::seal_label(&dept.public_key(), id, utc, "adrenaline 0.1 ml").unwrap();
        assert!(!sealed.contains("adrenaline"));
        assert_eq!(
            open_label(&dept, id, utc, &sealed).unwrap(),
            "adrenaline 0.1 ml"
        );
        for (key, rid, at) in [
            (&other, id, utc),
            (&dept, "room-1-20261129T101600Z", utc),
            (&dept, id, "2026-11-29T10:15:08.000Z"),
        ] {
            assert!(matches!(
                open_label(key, rid, at, &sealed),
                Err(OpenError::Label)
            ));
        }
        for bad in ["", "!!", "AAAA", &"A".repeat(MAX_SEALED_LABEL_CHARS + 4)] {
            assert!(open_label(&dept, id, utc, bad).is_err(), "{bad:.20}");
        }
        // The longest label fits the bound the reader applies; a longer one is cut, whole
        // characters only.
        let long = "é".repeat(MAX_LABEL_BYTES);
        let sealed = neoflix_seal::seal_label(&dept.public_key(), id, utc, &long).unwrap();
        assert!(sealed.len() <= MAX_SEALED_LABEL_CHARS);
        assert_eq!(
            open_label(&dept, id, utc, &sealed).unwrap(),
            "é".repeat(MAX_LABEL_BYTES / 2)
        );
    }
}

mod keys {
    use crate::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

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
