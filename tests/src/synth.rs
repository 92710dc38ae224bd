//! A recording written by the real store code, one fragment of random bytes at a time, claimed
//! through a ring as the box's storage claims it: for tests and benchmarks that need a genuine
//! sealed recording without a camera.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A recording being written under `<root>/recordings`.
pub struct Synth {
    ring: neoflix_store::Ring,
    writer: neoflix_store::RecordingWriter,
    plain: Vec<u8>,
    next: u64,
}

impl Synth {
    const STREAM: [u8; 16] = [1; 16];

    /// Recording `id` of `device` under `<root>/recordings`, with fragments of `fragment`
    /// plaintext bytes, sealed to a fixed department key.
    pub fn new(root: &Path, id: &str, device: &str, fragment: usize) -> Synth {
        let dept = neoflix_seal::DepartmentPublicKey::from_bytes(&[9; 32]).unwrap();
        let (mut ring, _) =
            neoflix_store::Ring::open(&root.join("ring"), Duration::from_secs(1), 1 << 40).unwrap();
        let writer = neoflix_store::RecordingWriter::create(
            &root.join("recordings"),
            id,
            device,
            "control",
            &dept,
            SystemTime::now(),
        )
        .unwrap();
        let (k, s) =
            neoflix_seal::seal(&Self::object(0, neoflix_seal::Kind::Init), b"init").unwrap();
        ring.begin_stream(Self::STREAM, &s, k).unwrap();
        Synth {
            ring,
            writer,
            plain: vec![0; fragment],
            next: 0,
        }
    }

    fn object(seq: u64, kind: neoflix_seal::Kind) -> neoflix_seal::ObjectId {
        neoflix_seal::ObjectId {
            stream: Self::STREAM,
            seq,
            kind,
        }
    }

    /// Seals the next fragment and claims it into the recording.
    pub fn claim_next(&mut self) {
        let seq = self.next;
        getrandom::fill(&mut self.plain).unwrap();
        let (k, s) = neoflix_seal::seal(
            &Self::object(seq, neoflix_seal::Kind::Fragment),
            &self.plain,
        )
        .unwrap();
        self.ring
            .push(
                seq,
                &s,
                k,
                Duration::from_secs(1),
                SystemTime::now(),
                std::time::Instant::now(),
            )
            .unwrap();
        let init = self.ring.init(&Self::STREAM).unwrap();
        self.writer
            .claim(self.ring.get(seq).unwrap(), &init, false)
            .unwrap();
        self.ring.keep(seq);
        self.next += 1;
    }

    /// Finalizes it, signed by `signer` if given; returns its directory.
    pub fn finalize(self, signer: Option<&neoflix_store::SigningIdentity>) -> PathBuf {
        let dir = self.writer.dir().to_path_buf();
        self.writer
            .finalize("control", SystemTime::now(), signer)
            .unwrap();
        dir
    }
}
