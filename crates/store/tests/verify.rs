//! The key-less check of a recording (`neoflix_format::verify`) against recordings written the
//! way the room box writes them.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use neoflix_format::manifest::chain;
use neoflix_format::verify::*;
use neoflix_format::{HEADER_LEN, Kind, ObjectId};
use neoflix_open::DepartmentSecretKey;
use neoflix_seal::seal;
use neoflix_store::{RecordingWriter, Ring};

mod tests {
    use super::*;

    /// A finalized recording of `streams`, each `(stream id, fragment sequence numbers)`.
    fn recording(root: &Path, streams: &[([u8; 16], Vec<u64>)]) -> std::path::PathBuf {
        let dept = DepartmentSecretKey::generate().unwrap();
        let (mut ring, _) =
            Ring::open(&root.join("ring"), Duration::from_secs(1000), 1 << 30).unwrap();
        let mut w = RecordingWriter::create(
            &root.join("rec"),
            "r",
            "room",
            "control",
            &dept.public_key(),
            SystemTime::now(),
        )
        .unwrap();
        for (stream, seqs) in streams {
            let id = |seq, kind| ObjectId {
                stream: *stream,
                seq,
                kind,
            };
            let (k, s) = seal(&id(0, Kind::Init), b"ftyp").unwrap();
            ring.begin_stream(*stream, &s, k).unwrap();
            for &seq in seqs {
                let (k, s) = seal(&id(seq, Kind::Fragment), &[seq as u8; 100]).unwrap();
                ring.push(
                    seq,
                    &s,
                    k,
                    Duration::from_secs(1),
                    SystemTime::now(),
                    std::time::Instant::now(),
                )
                .unwrap();
                let init = ring.init(stream).unwrap();
                w.claim(ring.get(seq).unwrap(), &init, false).unwrap();
                ring.keep(seq);
            }
        }
        w.finalize("control", SystemTime::now(), None).unwrap();
        root.join("rec/r")
    }

    /// Replaces fragment `i`'s sealed file and rewrites the manifest, chain included, to match:
    /// what someone who knows the format can do without any key.
    fn forge_fragment(dir: &Path, i: usize, bytes: &[u8]) {
        let mut m = read_manifest(dir).unwrap();
        fs::write(dir.join(&m.fragments[i].file), bytes).unwrap();
        m.fragments[i].size = bytes.len() as u64;
        m.fragments[i].sha256 = neoflix_seal::sha256_hex(bytes);
        m.chain = chain(&m.recording_id, &m.init_segments, &m.fragments);
        fs::write(dir.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    }

    /// Objects held somewhere else than a directory (the ingest server's object store): a map
    /// of name to bytes, read only through [`Objects`].
    struct InMemory(std::collections::HashMap<String, Vec<u8>>);

    impl Objects for InMemory {
        fn size(&self, name: &str) -> std::io::Result<u64> {
            self.0
                .get(name)
                .map(|b| b.len() as u64)
                .ok_or_else(|| std::io::ErrorKind::NotFound.into())
        }
        fn size_and_sha256(&self, name: &str) -> std::io::Result<(u64, String)> {
            let b = &self.0[name];
            Ok((b.len() as u64, neoflix_seal::sha256_hex(b)))
        }
        fn header(&self, name: &str) -> std::io::Result<[u8; HEADER_LEN]> {
            self.0[name]
                .get(..HEADER_LEN)
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| std::io::ErrorKind::UnexpectedEof.into())
        }
        fn read_small(&self, name: &str, max: u64) -> std::io::Result<Vec<u8>> {
            let b = self.0.get(name).ok_or(std::io::ErrorKind::NotFound)?;
            if b.len() as u64 > max {
                return Err(std::io::Error::other("too large"));
            }
            Ok(b.clone())
        }
        fn manifest_path(&self) -> std::path::PathBuf {
            "room/r/manifest.json".into()
        }
    }

    fn in_memory(dir: &Path) -> InMemory {
        InMemory(
            fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap())
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        fs::read(e.path()).unwrap(),
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn objects_held_elsewhere_verify_as_the_directory_does() {
        let t = tempfile::tempdir().unwrap();
        let dir = recording(t.path(), &[([1; 16], (0..4).collect())]);
        let from_dir = verify_manifest(&dir, read_manifest(&dir).unwrap()).unwrap();
        let held = verify_manifest_in(&in_memory(&dir), read_manifest(&dir).unwrap()).unwrap();
        assert_eq!(held.fragment_ids, from_dir.fragment_ids);
        assert_eq!(held.init_ids, from_dir.init_ids);

        // Each tampering is named the same way, wherever the objects are.
        let genuine = fs::read(dir.join("frag-000001.nfx")).unwrap();
        let mut shorter = genuine.clone();
        shorter[39] -= 1;
        forge_fragment(&dir, 1, &shorter);
        let m = read_manifest(&dir).unwrap();
        let a = verify_manifest(&dir, m.clone()).unwrap_err().to_string();
        let b = verify_manifest_in(&in_memory(&dir), m)
            .unwrap_err()
            .to_string();
        assert_eq!(a, b);
        assert!(a.contains("announces"), "{a}");

        forge_fragment(&dir, 1, &genuine);
        fs::remove_file(dir.join("frag-000002.key")).unwrap();
        let m = read_manifest(&dir).unwrap();
        let a = verify_manifest(&dir, m.clone()).unwrap_err().to_string();
        let b = verify_manifest_in(&in_memory(&dir), m)
            .unwrap_err()
            .to_string();
        assert!(
            a.contains("frag-000002.key") && b.contains("frag-000002.key"),
            "{a} / {b}"
        );

        let mut m = read_manifest(&dir).unwrap();
        m.format = "other".into();
        let e = verify_manifest_in(&in_memory(&dir), m)
            .unwrap_err()
            .to_string();
        assert!(e.contains("room/r/manifest.json"), "{e}");
    }

    /// Issue 8, item 4: the header announcing 0xfff000fff00100b8 bytes of plaintext in a
    /// 272-byte object is refused by name without any key (it used to verify as OK).
    #[test]
    fn a_header_whose_length_wraps_is_named_without_a_key() {
        let t = tempfile::tempdir().unwrap();
        let dir = recording(t.path(), &[([1; 16], (0..4).collect())]);
        let mut crafted = fs::read(dir.join("frag-000002.nfx")).unwrap()[..HEADER_LEN].to_vec();
        crafted[32..40].copy_from_slice(&0xfff0_00ff_f001_00b8u64.to_be_bytes());
        crafted.resize(272, 0);
        forge_fragment(&dir, 2, &crafted);
        let err = verify(&dir).unwrap_err().to_string();
        assert!(
            err.contains("fragment 2 (frag-000002.nfx)") && err.contains("plaintext"),
            "{err}"
        );
    }

    #[test]
    fn headers_that_disagree_with_the_manifest_are_named() {
        let t = tempfile::tempdir().unwrap();
        let dir = recording(t.path(), &[([1; 16], (0..4).collect())]);
        let v = verify(&dir).unwrap();
        assert_eq!(
            v.fragment_ids.iter().map(|id| id.seq).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert_eq!(v.init_ids[0].kind, Kind::Init);
        let genuine = fs::read(dir.join("frag-000001.nfx")).unwrap();

        // A header announcing one byte less than the file holds.
        let mut shorter = genuine.clone();
        shorter[39] -= 1;
        forge_fragment(&dir, 1, &shorter);
        let err = verify(&dir).unwrap_err().to_string();
        assert!(err.contains("announces"), "{err}");

        // An init segment listed as a fragment.
        let init = fs::read(dir.join("init-000.nfx")).unwrap();
        forge_fragment(&dir, 1, &init);
        let err = verify(&dir).unwrap_err().to_string();
        assert!(err.contains("says it is an init segment"), "{err}");

        // Another fragment's (valid) object under this one's key record.
        forge_fragment(&dir, 1, &fs::read(dir.join("frag-000003.nfx")).unwrap());
        let err = verify(&dir).unwrap_err().to_string();
        assert!(
            err.contains("fragment 1 (frag-000001.nfx)") && err.contains("another object"),
            "{err}"
        );

        // Back to the genuine bytes: whole again.
        forge_fragment(&dir, 1, &genuine);
        verify(&dir).unwrap();
    }
    /// Removes the manifest's fragments at `positions`, with their files, renumbers the list and
    /// recomputes the chain: a deletion hidden by someone who knows the format.
    fn hide_fragments(dir: &Path, positions: &[usize]) {
        let mut m = read_manifest(dir).unwrap();
        for &p in positions.iter().rev() {
            let gone = m.fragments.remove(p);
            fs::remove_file(dir.join(&gone.file)).unwrap();
            fs::remove_file(dir.join(&gone.key_file)).unwrap();
        }
        for (i, e) in m.fragments.iter_mut().enumerate() {
            e.index = i as u64;
        }
        m.chain = chain(&m.recording_id, &m.init_segments, &m.fragments);
        fs::write(dir.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    }

    /// Issue 8, item 5: a fragment removed from the middle, the list renumbered and the chain
    /// recomputed, verified as whole.
    #[test]
    fn a_fragment_removed_from_the_middle_is_named_by_its_sequence_number() {
        let t = tempfile::tempdir().unwrap();
        let dir = recording(t.path(), &[([1; 16], (10..16).collect())]);
        hide_fragments(&dir, &[2]);
        let err = verify(&dir).unwrap_err().to_string();
        assert!(
            err.contains("fragment 12 missing between 11 and 13"),
            "{err}"
        );
        assert!(err.contains("fragment 2 (frag-000003.nfx)"), "{err}");

        let t = tempfile::tempdir().unwrap();
        let dir = recording(t.path(), &[([1; 16], (10..17).collect())]);
        hide_fragments(&dir, &[1, 2, 3, 5]);
        let err = verify(&dir).unwrap_err().to_string();
        assert!(
            err.contains("fragments 11 to 13 missing between 10 and 14"),
            "{err}"
        );
        // Every gap, for an export that writes what is there.
        let mut v = verify_manifest(&dir, read_manifest(&dir).unwrap()).unwrap();
        let all: Vec<String> = gaps(&v).iter().map(|g| g.to_string()).collect();
        assert_eq!(all.len(), 2, "{all:?}");
        assert!(
            all[1].contains("fragment 15 missing between 14 and 16"),
            "{all:?}"
        );
        v.manifest.fragments.clear();
        v.fragment_ids.clear();
        assert!(gaps(&v).is_empty());
    }

    #[test]
    fn sequence_numbers_may_jump_between_capture_streams_but_not_go_back() {
        // A camera restart: the new stream's first fragment may follow a gap (a fragment that
        // was being sealed when the old pipeline stopped is dropped), never come before.
        let t = tempfile::tempdir().unwrap();
        let dir = recording(
            t.path(),
            &[([1; 16], (0..3).collect()), ([2; 16], (4..7).collect())],
        );
        let v = verify(&dir).unwrap();
        assert_eq!(v.fragment_ids[3].seq, 4);

        let t = tempfile::tempdir().unwrap();
        let dir = recording(
            t.path(),
            &[([1; 16], (5..8).collect()), ([2; 16], (0..3).collect())],
        );
        let err = verify(&dir).unwrap_err().to_string();
        assert!(
            err.contains("fragment 3 (frag-000003.nfx)") && err.contains("sequence 0 after 7"),
            "{err}"
        );
    }

    #[test]
    fn fragments_reordered_or_under_another_streams_init_segment_are_named() {
        let t = tempfile::tempdir().unwrap();
        let dir = recording(t.path(), &[([1; 16], (0..4).collect())]);
        let mut m = read_manifest(&dir).unwrap();
        m.fragments.swap(1, 2);
        for (i, e) in m.fragments.iter_mut().enumerate() {
            e.index = i as u64;
        }
        m.chain = chain(&m.recording_id, &m.init_segments, &m.fragments);
        fs::write(dir.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        let err = verify(&dir).unwrap_err().to_string();
        assert!(
            err.contains("fragment 2 (frag-000001.nfx)") && err.contains("sequence 1 after 2"),
            "{err}"
        );

        let t = tempfile::tempdir().unwrap();
        let dir = recording(
            t.path(),
            &[([1; 16], (0..2).collect()), ([2; 16], (2..4).collect())],
        );
        let mut m = read_manifest(&dir).unwrap();
        m.fragments[3].init = Some(0);
        m.chain = chain(&m.recording_id, &m.init_segments, &m.fragments);
        fs::write(dir.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        let err = verify(&dir).unwrap_err().to_string();
        assert!(
            err.contains("fragment 3 (frag-000003.nfx)") && err.contains("another capture stream"),
            "{err}"
        );
    }
    /// Issue 8, item 6: objects, key records and the manifest are read only from regular files
    /// of the recording directory itself: no symlink (to /dev/zero, or anywhere), no FIFO (which
    /// made verify wait for ever), each refused by name and without reading it.
    #[test]
    fn only_regular_files_are_read() {
        let t = tempfile::tempdir().unwrap();
        let dir = recording(t.path(), &[([1; 16], (0..3).collect())]);
        let fifo = |p: &Path| {
            fs::remove_file(p).unwrap();
            let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
            // SAFETY: a NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        };
        let link = |p: &Path, to: &Path| {
            fs::remove_file(p).unwrap();
            std::os::unix::fs::symlink(to, p).unwrap();
        };
        // Verify runs on its own thread: a regression would hang, and must fail instead.
        let verify_capped = |dir: &Path| {
            let dir = dir.to_owned();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || tx.send(verify(&dir).map(|_| ())));
            rx.recv_timeout(Duration::from_secs(30))
                .expect("verify hung")
                .unwrap_err()
                .to_string()
        };
        let elsewhere = t.path().join("copy.nfx");
        fs::copy(dir.join("frag-000001.nfx"), &elsewhere).unwrap();
        for (file, damage) in [
            ("frag-000001.nfx", &|p: &Path| link(p, &elsewhere) as ()),
            ("frag-000001.nfx", &|p: &Path| {
                link(p, Path::new("/dev/zero"))
            }),
            ("frag-000001.nfx", &fifo),
            ("frag-000001.key", &fifo),
            ("manifest.json", &fifo),
            ("manifest.json", &|p: &Path| link(p, Path::new("/dev/zero"))),
        ] as [(&str, &dyn Fn(&Path)); 6]
        {
            let copy = t.path().join("damaged");
            let _ = fs::remove_dir_all(&copy);
            fs::create_dir(&copy).unwrap();
            for e in fs::read_dir(&dir).unwrap() {
                let e = e.unwrap();
                fs::copy(e.path(), copy.join(e.file_name())).unwrap();
            }
            damage(&copy.join(file));
            let err = verify_capped(&copy);
            assert!(
                err.contains(file) && err.contains("not a regular file"),
                "{file}: {err}"
            );
        }
    }

    #[test]
    fn a_key_record_of_the_wrong_size_is_refused_before_it_is_hashed() {
        let t = tempfile::tempdir().unwrap();
        let dir = recording(t.path(), &[([1; 16], (0..3).collect())]);
        fs::write(dir.join("frag-000002.key"), vec![0u8; 10 << 20]).unwrap();
        let err = verify(&dir).unwrap_err().to_string();
        assert!(
            err.contains("fragment 2 (frag-000002.nfx): frag-000002.key: size 10485760 differs from the expected 144"),
            "{err}"
        );
    }
}
