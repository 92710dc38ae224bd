//! Writes the seed corpora `fuzz/corpus/<target>/seed-*` from the crates' own writers: a real
//! recording (ring, claims, markers, journal, manifest signed by the device, sealed objects and
//! key records wrapped to the fixed fuzz department key), requests and replies as the programs
//! send them, the server's signed receipt for the upload seed, and the example configs; and
//! the recording's files as `fuzz/fixtures/recording`. Run:
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds`.
//!
//! The department PKI of the fixtures (`fuzz/fixtures/pki`: CA certificate, the device
//! `room-1` and the server `ingest`, each with its key) is issued for 100 years when it is
//! missing and kept otherwise, so that a rerun does not change who signs; remove the directory
//! for a new one. Sealing and signing are randomised, so a rerun rewrites the seeds with other
//! bytes of the same shape.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use neoflix_control::{Reply, Request};
use neoflix_format::custody::SIGNATURE_FILE;
use neoflix_format::{MANIFEST_FILE, Manifest};
use neoflix_fuzz::{AUTO_DIGEST, INGEST_DEVICE, INGEST_SERVER, department_key};
use neoflix_pki::{Ca, Role};
use neoflix_seal::{Kind, ObjectId, seal};
use neoflix_store::{RecordingWriter, Ring};

/// Lifetime of the fixture certificates: long enough never to expire under the fuzzer.
const PKI_DAYS: i64 = 36_500;

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

/// Issues the fixture PKI into `fuzz/fixtures/pki` unless it is there: the CA's certificate
/// (not its key: nothing more is issued from it), and certificate and key of the device and
/// the server.
fn pki(work: &Path) {
    let dir = neoflix_fuzz::pki_dir();
    let files = [
        "ca.crt".to_string(),
        format!("{INGEST_DEVICE}.crt"),
        format!("{INGEST_DEVICE}.key"),
        format!("{INGEST_SERVER}.crt"),
        format!("{INGEST_SERVER}.key"),
    ];
    if files.iter().all(|f| dir.join(f).is_file()) {
        return;
    }
    let ca_dir = work.join("ca");
    let ca = Ca::init(&ca_dir, "Neoflix fuzz department CA").expect("CA");
    ca.issue(INGEST_DEVICE, Role::Device, Some(PKI_DAYS))
        .expect("device certificate");
    ca.issue(INGEST_SERVER, Role::Server, Some(PKI_DAYS))
        .expect("server certificate");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("pki fixture directory");
    for f in files {
        fs::copy(ca_dir.join(&f), dir.join(&f)).expect("pki fixture file");
    }
}

/// A recording written as neoflixd writes one, its manifest signed by the device: returns its
/// directory and manifest.
fn recording(root: &Path) -> (PathBuf, Manifest) {
    // Timed by the clock, as a box's recording is: its signature is judged at its signing time,
    // which must lie within the fixture certificates' validity (from an hour before they were
    // issued) and not ahead of the server's clock. Whole seconds, a minute ago.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("a clock after 1970");
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs() - 60);
    // The monotonic clock's reading at t0: markers are placed in the video by it.
    let m0 = std::time::Instant::now();
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
            m0 + Duration::from_secs(seq),
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
    // As neoflixd claims: the oldest fragment first, kept in the ring once claimed.
    let mut preroll = true;
    let mut claimed = None;
    while let Some(e) = ring.next_after(claimed) {
        let seq = e.seq;
        w.claim(e, &init, preroll).expect("claim");
        ring.keep(seq);
        claimed = Some(seq);
        preroll = false;
    }
    w.mark(
        "intubation",
        "pedal",
        t0 + Duration::from_millis(1500),
        m0 + Duration::from_millis(1500),
    )
    .expect("mark");
    w.mark(
        "",
        "mqtt",
        t0 + Duration::from_millis(1700),
        m0 + Duration::from_millis(1700),
    )
    .expect("mark");
    w.stop_requested("pedal", t0 + Duration::from_secs(2))
        .expect("stop");
    let dir = w.dir().to_owned();
    let journal = fs::read(dir.join("journal.jsonl")).expect("journal");
    let m = w
        .finalize(
            "pedal",
            t0 + Duration::from_secs(3),
            Some(&neoflix_fuzz::identity(INGEST_DEVICE)),
        )
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

/// Keeps the recording's objects, manifest and signature as the fixture the manifest and
/// journal targets read.
fn write_fixture(dir: &Path, m: &Manifest) {
    let fixture = neoflix_fuzz::fixture_dir();
    let _ = fs::remove_dir_all(&fixture);
    fs::create_dir_all(&fixture).expect("fixture directory");
    let objects = m
        .init_segments
        .iter()
        .chain(&m.fragments)
        .flat_map(|e| [e.file.as_str(), e.key_file.as_str()]);
    for name in objects.chain([MANIFEST_FILE, SIGNATURE_FILE]) {
        fs::copy(dir.join(name), fixture.join(name)).expect("fixture file");
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
    let manifest = fs::read(dir.join(MANIFEST_FILE)).expect("manifest");
    let put_manifest = put("/v1/recordings/rec-1/manifest", &manifest);
    // As the uplink sends them: the signature first, then the manifest it signs.
    let sig = fs::read(dir.join(SIGNATURE_FILE)).expect("signature");
    upload.extend(put(
        &format!("/v1/recordings/rec-1/objects/{SIGNATURE_FILE}"),
        &sig,
    ));
    upload.extend(&put_manifest);
    upload.extend(b"GET /v1/recordings/rec-1 HTTP/1.1\r\nhost: ingest\r\n\r\n");
    upload.extend(b"GET /v1/recordings HTTP/1.1\r\nhost: ingest\r\n\r\n");
    let mut resume = objects_only.clone();
    resume.extend(b"GET /v1/recordings/rec-1 HTTP/1.1\r\nhost: ingest\r\n\r\n");
    let mut unsigned = objects_only;
    unsigned.extend(&put_manifest);
    vec![
        ("upload", upload),
        ("resume", resume),
        ("unsigned", unsigned),
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

/// The device's signature over the seed manifest, the receipt the ingest target answers for the
/// upload seed, and a withdrawal notice by the same server: the JSON, a NUL, then the signed
/// document (what the target splits; a receipt or notice carries its document inside).
fn signature_seeds(dir: &Path, upload: &[u8]) -> Seeds {
    let mut manifest = fs::read(dir.join(SIGNATURE_FILE)).expect("signature");
    manifest.push(0);
    manifest.extend(fs::read(dir.join(MANIFEST_FILE)).expect("manifest"));
    let answers = neoflix_fuzz::answers(&neoflix_fuzz::Ingest::new().serve(upload));
    let receipt = answers
        .iter()
        .filter(|(status, _)| status == "201 Created")
        .find_map(|(_, body)| {
            neoflix_format::SignedReceipt::from_json(body.as_bytes())
                .is_ok()
                .then(|| body.clone().into_bytes())
        })
        .unwrap_or_else(|| panic!("the upload seed got no receipt: {answers:?}"));
    let withdrawal = neoflix_format::SignedWithdrawal::sign(
        &neoflix_format::Withdrawal {
            recording_id: "rec-1".into(),
            device_id: neoflix_fuzz::INGEST_DEVICE.into(),
            withdrawn_utc: "2026-11-28T10:15:02.120Z".into(),
        },
        &neoflix_fuzz::identity(neoflix_fuzz::INGEST_SERVER),
        std::time::SystemTime::now(),
    )
    .expect("the fixture server signs")
    .to_json();
    vec![
        ("manifest", manifest),
        ("receipt", receipt),
        ("withdrawal", withdrawal),
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

/// The real isofmp4mux stream of crates/mp4/testdata in the target's framing: options, range,
/// then length-prefixed init segment and fragments.
fn mp4_progressive_seeds() -> Seeds {
    let pieces: [&[u8]; 4] = [
        include_bytes!("../../crates/mp4/testdata/init.mp4"),
        include_bytes!("../../crates/mp4/testdata/frag0.m4s"),
        include_bytes!("../../crates/mp4/testdata/frag1.m4s"),
        include_bytes!("../../crates/mp4/testdata/frag2.m4s"),
    ];
    let framed = |options: u8, from: u8, to: u8| {
        let mut b = vec![options, from, to];
        for p in pieces {
            b.extend_from_slice(&(p.len() as u32).to_be_bytes());
            b.extend_from_slice(p);
        }
        b
    };
    vec![
        ("gstreamer", framed(0, 0, 0)),
        ("gstreamer-range-chapters", framed(3, 12, 20)),
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

/// What an S3 store answers: a listing page (last, truncated, with prefixes) and an error.
fn s3_seeds() -> Seeds {
    let page = |body: &str| {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>neoflix</Name><Prefix>unit-a/</Prefix>{body}</ListBucketResult>"
        )
        .into_bytes()
    };
    let sha = "ab".repeat(32);
    vec![
        (
            "listing",
            page(&format!(
                "<KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated><Contents><Key>unit-a/room-1/rec/frag-000001.nfx.{sha}</Key><LastModified>2026-11-30T05:00:00.000Z</LastModified><ETag>\"0\"</ETag><Size>4096</Size><StorageClass>STANDARD</StorageClass></Contents><Contents><Key>unit-a/room-1/rec/manifest.json</Key><Size>900</Size></Contents>"
            )),
        ),
        (
            "truncated",
            page("<IsTruncated>true</IsTruncated><NextContinuationToken>dW5pdC1hL3Jvb20tMQ==</NextContinuationToken><Contents><Key>unit-a/a</Key><Size>1</Size></Contents>"),
        ),
        (
            "prefixes",
            page("<Delimiter>/</Delimiter><IsTruncated>false</IsTruncated><CommonPrefixes><Prefix>unit-a/room-1/</Prefix></CommonPrefixes><CommonPrefixes><Prefix>unit-a/room-2/</Prefix></CommonPrefixes>"),
        ),
        (
            "error",
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NoSuchKey</Code><Message>Key not found</Message><Resource>/neoflix/unit-a/x</Resource><Region>garage</Region></Error>".to_vec(),
        ),
    ]
}

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let work = neoflix_fuzz::scratch("seeds");
    pki(&work);
    let (dir, m) = recording(&work);
    let journal = fs::read(work.join("journal.jsonl")).expect("journal");
    write_fixture(&dir, &m);
    let ingest = ingest_seeds(&dir, &m);
    let upload = &ingest
        .iter()
        .find(|(n, _)| *n == "upload")
        .expect("upload")
        .1;
    let signature = signature_seeds(&dir, upload);
    let targets: Vec<(&str, Seeds)> = vec![
        ("sealed", sealed_seeds()),
        ("key_file", key_file_seeds()),
        ("manifest", manifest_seeds(&dir, &m)),
        ("journal", vec![("recording", journal)]),
        ("mp4", mp4_seeds()),
        ("mp4_progressive", mp4_progressive_seeds()),
        ("mqtt_command", mqtt_seeds()),
        ("control_line", control_seeds()),
        ("ingest_http", ingest),
        ("signature", signature),
        ("s3_answer", s3_seeds()),
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
