//! Writes the seed corpora `fuzz/corpus/<target>/seed-*` from the crates' own writers: a real
//! recording (ring, claims, markers, journal, manifest, sealed objects and key records wrapped
//! to the fixed fuzz department key), requests and replies as the programs send them, and the
//! example configs; and the recording's sealed objects as `fuzz/fixtures/recording`. Run: `cargo run --manifest-path fuzz/Cargo.toml --example seeds`.
//! Sealing is randomised, so a rerun rewrites the seeds with other bytes of the same shape.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use neoflix_control::{Reply, Request};
use neoflix_fuzz::{AUTO_DIGEST, INGEST_DEVICE, department_key};
use neoflix_seal::{Kind, ObjectId, seal};
use neoflix_store::{Manifest, RecordingWriter, Ring};

type Seeds = Vec<(&'static str, Vec<u8>)>;

fn sealed_seeds() -> Seeds {
    let dept = department_key().public_key();
    let mut out = Seeds::new();
    for (name, kind, len) in [
        ("init", Kind::Init, 40),
        ("empty", Kind::Fragment, 0),
        ("fragment", Kind::Fragment, 300),
        ("two-chunks", Kind::Fragment, 65_536 + 100),
    ] {
        let id = ObjectId {
            stream: [7; 16],
            seq: 3,
            kind,
        };
        let plaintext: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let (key, sealed) = seal(&id, &plaintext).expect("seal");
        let mut seed = key.wrap(&dept, &sealed).expect("wrap").as_bytes().to_vec();
        seed.extend_from_slice(&sealed);
        out.push((name, seed));
    }
    out
}

fn key_file_seeds() -> Seeds {
    let sk = department_key();
    vec![
        ("public", sk.public_key().to_file_text().into_bytes()),
        ("secret", sk.to_file_text().as_bytes().to_vec()),
        (
            "public-crlf",
            sk.public_key()
                .to_file_text()
                .replace('\n', "\r\n")
                .into_bytes(),
        ),
    ]
}

/// A recording written as neoflixd writes one: returns its directory and manifest.
fn recording(root: &Path) -> (PathBuf, Manifest) {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let (mut ring, _) =
        Ring::open(&root.join("ring"), Duration::from_secs(60), 1 << 30).expect("ring");
    let stream = [9; 16];
    let (k, s) = seal(
        &ObjectId {
            stream,
            seq: 0,
            kind: Kind::Init,
        },
        &mp4_init(),
    )
    .expect("seal");
    ring.begin_stream(stream, &s, k).expect("init");
    for seq in 0..2u64 {
        let (k, s) = seal(
            &ObjectId {
                stream,
                seq,
                kind: Kind::Fragment,
            },
            &mp4_fragment(90_000 * (seq + 5), 1),
        )
        .expect("seal");
        ring.push(
            seq,
            &s,
            k,
            Duration::from_secs(1),
            t0 + Duration::from_secs(seq),
        )
        .expect("push");
    }
    let dept = department_key().public_key();
    let mut w = RecordingWriter::create(
        &root.join("recordings"),
        "rec-1",
        INGEST_DEVICE,
        "pedal",
        &dept,
        t0 + Duration::from_secs(1),
    )
    .expect("create");
    let init = ring.init(&stream).expect("init in ring");
    // As neoflixd claims: the oldest fragment first, taken out of the ring once claimed.
    let mut preroll = true;
    while let Some(e) = ring.oldest() {
        let seq = e.seq;
        w.claim(e, &init, preroll).expect("claim");
        ring.take(seq).expect("take");
        preroll = false;
    }
    w.mark("intubation", "pedal", t0 + Duration::from_millis(1500))
        .expect("mark");
    w.mark("", "mqtt", t0 + Duration::from_millis(1700))
        .expect("mark");
    w.stop_requested("pedal", t0 + Duration::from_secs(2))
        .expect("stop");
    let dir = w.dir().to_owned();
    let journal = fs::read(dir.join("journal.jsonl")).expect("journal");
    let m = w
        .finalize("pedal", t0 + Duration::from_secs(3))
        .expect("finalize");
    fs::write(root.join("journal.jsonl"), journal).expect("keep journal");
    (dir, m)
}

fn manifest_seeds(dir: &Path, m: &Manifest) -> Seeds {
    let mut interrupted = m.clone();
    interrupted.markers.clear();
    interrupted.status = neoflix_store::Status::Interrupted;
    vec![
        (
            "recording",
            fs::read(dir.join("manifest.json")).expect("manifest"),
        ),
        (
            "interrupted",
            serde_json::to_vec(&interrupted).expect("manifest"),
        ),
    ]
}

/// Keeps the recording's objects as the fixture the manifest and journal targets read.
fn write_fixture(dir: &Path, m: &Manifest) {
    let fixture = neoflix_fuzz::fixture_dir();
    let _ = fs::remove_dir_all(&fixture);
    fs::create_dir_all(&fixture).expect("fixture directory");
    for e in m.init_segments.iter().chain(&m.fragments) {
        for name in [&e.file, &e.key_file] {
            fs::copy(dir.join(name), fixture.join(name)).expect("fixture file");
        }
    }
}

fn put(path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "PUT {path} HTTP/1.1\r\nhost: ingest\r\ncontent-length: {}\r\ncontent-digest: ",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(AUTO_DIGEST);
    r.extend_from_slice(b"\r\n\r\n");
    r.extend_from_slice(body);
    r
}

fn ingest_seeds(dir: &Path, m: &Manifest) -> Seeds {
    let mut upload = Vec::new();
    for e in m.init_segments.iter().chain(&m.fragments) {
        for name in [&e.file, &e.key_file] {
            let body = fs::read(dir.join(name)).expect("object");
            upload.extend(put(&format!("/v1/recordings/rec-1/objects/{name}"), &body));
        }
    }
    let objects_only = upload.clone();
    let manifest = fs::read(dir.join("manifest.json")).expect("manifest");
    upload.extend(put("/v1/recordings/rec-1/manifest", &manifest));
    upload.extend(b"GET /v1/recordings/rec-1 HTTP/1.1\r\nhost: ingest\r\n\r\n");
    upload.extend(b"GET /v1/recordings HTTP/1.1\r\nhost: ingest\r\n\r\n");
    let mut resume = objects_only.clone();
    resume.extend(b"GET /v1/recordings/rec-1 HTTP/1.1\r\nhost: ingest\r\n\r\n");
    vec![
        ("upload", upload),
        ("resume", resume),
        (
            "traversal",
            b"GET /v1/recordings/../etc HTTP/1.1\r\nhost: ingest\r\n\r\nGET /v1/recordings/%2e%2e HTTP/1.1\r\nhost: ingest\r\n\r\n".to_vec(),
        ),
        (
            "chunked",
            b"PUT /v1/recordings/rec-2/objects/frag-000000.nfx HTTP/1.1\r\nhost: ingest\r\ntransfer-encoding: chunked\r\ncontent-digest: sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:\r\n\r\n0\r\n\r\n".to_vec(),
        ),
    ]
}

fn bx(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut b = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    b.extend_from_slice(kind);
    b.extend_from_slice(body);
    b
}

fn mp4_init() -> Vec<u8> {
    let mut b = bx(b"ftyp", b"iso6\0\0\0\0iso6mp41");
    b.extend(bx(b"moov", &bx(b"mvhd", &[0; 100])));
    b
}

/// A media fragment as isofmp4mux writes one: `moof` (`mfhd`, `traf` with `tfhd`, `tfdt`,
/// `trun`) then `mdat`, with a version 0 or 1 `tfdt`.
fn mp4_fragment(decode_time: u64, version: u8) -> Vec<u8> {
    let tfdt = if version == 1 {
        let mut p = vec![1, 0, 0, 0];
        p.extend_from_slice(&decode_time.to_be_bytes());
        p
    } else {
        let mut p = vec![0, 0, 0, 0];
        p.extend_from_slice(&(decode_time as u32).to_be_bytes());
        p
    };
    let mut traf = bx(b"tfhd", &[0, 2, 0, 0, 0, 0, 0, 1]);
    traf.extend(bx(b"tfdt", &tfdt));
    traf.extend(bx(b"trun", &[0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0]));
    let mut moof = bx(b"mfhd", &[0, 0, 0, 0, 0, 0, 0, 7]);
    moof.extend(bx(b"traf", &traf));
    let mut b = bx(b"moof", &moof);
    b.extend(bx(b"mdat", &[0x65; 32]));
    b
}

fn mp4_seeds() -> Seeds {
    let mut two_trafs = mp4_fragment(900_000, 1);
    let second = mp4_fragment(910_000, 0);
    two_trafs.extend(second);
    let mut large = vec![0, 0, 0, 1];
    large.extend_from_slice(b"free");
    large.extend_from_slice(&16u64.to_be_bytes());
    large.extend(mp4_fragment(5, 0));
    vec![
        ("v1", mp4_fragment(90_000 * 3600, 1)),
        ("v0", mp4_fragment(123_456, 0)),
        ("two-fragments", two_trafs),
        ("large-size-box", large),
        ("init", mp4_init()),
    ]
}

fn mqtt_seeds() -> Seeds {
    [
        ("start", r#"{"cmd":"start","request_id":"r1"}"#),
        ("stop", r#"{"cmd":"stop","device":"room-1"}"#),
        (
            "mark",
            r#"{"cmd":"mark","label":"adrenaline","request_id":"r2"}"#,
        ),
        ("privacy", r#"{"cmd":"privacy","on":true}"#),
        ("ping", r#"{"cmd":"ping","request_id":"ping-\u00e9"}"#),
        ("unknown", r#"{"cmd":"r\u00e9boot","request_id":"r3"}"#),
    ]
    .into_iter()
    .map(|(n, s)| (n, s.as_bytes().to_vec()))
    .collect()
}

fn control_seeds() -> Seeds {
    let mut out: Seeds = [
        ("start", Request::Start {}),
        ("stop", Request::Stop {}),
        (
            "mark",
            Request::Mark {
                label: "cord clamped".into(),
            },
        ),
        ("privacy", Request::Privacy { on: false }),
        ("status", Request::Status {}),
    ]
    .into_iter()
    .map(|(n, r)| {
        let mut line = serde_json::to_vec(&r).expect("request");
        line.push(b'\n');
        (n, line)
    })
    .collect();
    out.push(("reply-ok", serde_json::to_vec(&Reply::ok()).expect("reply")));
    out.push((
        "reply-error",
        serde_json::to_vec(&Reply::error("no recording")).expect("reply"),
    ));
    out
}

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let work = neoflix_fuzz::scratch("seeds");
    let (dir, m) = recording(&work);
    let journal = fs::read(work.join("journal.jsonl")).expect("journal");
    write_fixture(&dir, &m);
    let targets: Vec<(&str, Seeds)> = vec![
        ("sealed", sealed_seeds()),
        ("key_file", key_file_seeds()),
        ("manifest", manifest_seeds(&dir, &m)),
        ("journal", vec![("recording", journal)]),
        ("mp4", mp4_seeds()),
        ("mqtt_command", mqtt_seeds()),
        ("control_line", control_seeds()),
        ("ingest_http", ingest_seeds(&dir, &m)),
        (
            "config",
            vec![(
                "example",
                include_bytes!("../../config/neoflixd.toml").to_vec(),
            )],
        ),
        (
            "ingest_config",
            vec![(
                "example",
                include_bytes!("../../config/neoflix-ingest.toml").to_vec(),
            )],
        ),
    ];
    for (target, seeds) in targets {
        let d = corpus.join(target);
        fs::create_dir_all(&d).expect("corpus directory");
        for (name, bytes) in seeds {
            fs::write(d.join(format!("seed-{name}")), bytes).expect("seed");
        }
    }
    let _ = fs::remove_dir_all(&work);
    println!("seeds written under {}", corpus.display());
}
