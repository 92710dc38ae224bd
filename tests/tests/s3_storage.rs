//! Issue 14: the server's storage on an S3-compatible store, against a real three-node Garage
//! cluster on loopback: objects stream into the bucket under content-addressed keys, a body
//! that is not the announced one leaves nothing, a recording completes exactly once, reads
//! back, is listed, withdrawn and deleted (key records first), and a deletion a crash
//! interrupted is finished.

use std::path::Path;
use std::sync::{Arc, Mutex};

use neoflix_e2e::garage::{self, Garage, runtime, settled};
use neoflix_ingest::config::{S3Config, StorageBackend, StorageConfig};
use neoflix_ingest::custody::Custody;
use neoflix_ingest::storage::{Storage, StorageError, Stored};
use neoflix_pki::{Ca, Role};
use sha2::{Digest, Sha256};

const PREFIX: &str = "unit-a/";

fn storage(g: &Garage, dir: &Path) -> Storage {
    let secret = dir.join("secret");
    std::fs::write(&secret, format!("{}\n", garage::SECRET)).unwrap();
    Storage::configured(
        &StorageConfig {
            backend: StorageBackend::S3(Box::new(S3Config {
                endpoint: g.endpoint(1).parse().unwrap(),
                bucket: garage::BUCKET.into(),
                region: garage::REGION.into(),
                prefix: PREFIX.into(),
                path_style: true,
                access_key_id: Some(garage::KEY_ID.into()),
                secret_access_key_file: Some(secret),
                ca: None,
            })),
            max_object_bytes: 1 << 20,
        },
        true,
    )
    .unwrap()
}

/// The department's CA, the server's custody, and room-1's signing identity.
fn pki(dir: &Path) -> (Custody, neoflix_format::SigningIdentity) {
    let ca = Ca::init(&dir.join("ca"), "Test CA").unwrap();
    let identity = |name: &str, role| {
        let (crt, key) = ca.issue(name, role, None).unwrap();
        neoflix_format::SigningIdentity::from_pem(
            &std::fs::read(crt).unwrap(),
            &std::fs::read(key).unwrap(),
        )
        .unwrap()
    };
    let server = identity("localhost", Role::Server);
    let custody =
        Custody::from_pem(&std::fs::read(dir.join("ca/ca.crt")).unwrap(), server).unwrap();
    (custody, identity("room-1", Role::Device))
}

/// A signed recording of room-1 with `n` fragments: its directory.
fn recording(dir: &Path, n: usize, signer: &neoflix_format::SigningIdentity) -> std::path::PathBuf {
    let mut synth = neoflix_e2e::synth::Synth::new(dir, "rec", "room-1", 3000);
    for _ in 0..n {
        synth.claim_next();
    }
    synth.finalize(Some(signer))
}

/// Its objects: (name, bytes), signature included.
fn objects(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(n, _)| neoflix_ingest::storage::valid_object_name(n))
        .map(|(n, p)| (n, std::fs::read(p).unwrap()))
        .collect();
    v.sort();
    v
}

/// Uploads one object in two chunks, as the server's connection does; what the store said.
fn upload(s: &Storage, id: &str, name: &str, bytes: &[u8]) -> Result<Stored, StorageError> {
    let sha: [u8; 32] = Sha256::digest(bytes).into();
    let mut up = s.begin("room-1", id, name, &sha, Some(bytes.len() as u64))?;
    let (a, b) = bytes.split_at(bytes.len() / 2);
    up.write(a)?;
    up.write(b)?;
    s.commit(up, &sha)
}

/// Keys under `prefix`, through another node than the storage's.
fn keys(g: &Garage, prefix: &str) -> Vec<String> {
    let rt = runtime();
    let b = g.bucket(2);
    rt.block_on(settled(|| b.list_all(prefix, 1000, 10_000)))
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}

/// Keys under `prefix` once a listing shows none: Garage's listings were seen to show a key
/// for a moment after its DELETE was acknowledged, on a loaded machine.
fn eventually_none(g: &Garage, prefix: &str) {
    eventually(g, prefix, |left| left.is_empty());
}

/// Keys under `prefix` once they satisfy `ok` (see [`eventually_none`]), for up to 10 s.
fn eventually(g: &Garage, prefix: &str, ok: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let listed = keys(g, prefix);
        if ok(&listed) {
            return listed;
        }
        assert!(std::time::Instant::now() < deadline, "{listed:?}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Store calls while Garage's quorum settles (a 503 now and then on a loaded machine) are
/// made again, as the box does.
fn settled_call<T>(mut f: impl FnMut() -> Result<T, StorageError>) -> Result<T, StorageError> {
    for _ in 0..50 {
        match f() {
            Err(StorageError::Store(why)) if why.contains(" 503 ") || why.contains("reach") => {
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
            r => return r,
        }
    }
    f()
}

#[test]
fn a_recording_streams_into_the_bucket_completes_once_reads_back_and_is_withdrawn() {
    let g = Garage::serving();
    let t = tempfile::tempdir().unwrap();
    let s = storage(&g, t.path());
    let (custody, room) = pki(t.path());
    let dir = recording(&t.path().join("box"), 3, &room);
    let m = neoflix_format::read_manifest(&dir).unwrap();
    let id = m.recording_id.clone();
    let all = objects(&dir);

    // No upload before the store has shown that it refuses a body that is not the announced
    // one; Garage does.
    let (name, bytes) = &all[0];
    let e = upload(&s, &id, name, bytes).unwrap_err();
    assert!(
        matches!(e, StorageError::Store(ref w) if w.contains("not checked yet")),
        "{e}"
    );
    let Storage::S3(s3) = &s else { unreachable!() };
    settled_call(|| s3.probe().map(|r| r.expect("Garage refuses a forged body"))).unwrap();
    // The probe leaves nothing.
    eventually_none(&g, &format!("{PREFIX}.probe/"));

    // Without a length there is nothing to sign the PUT with.
    let sha: [u8; 32] = Sha256::digest(bytes).into();
    assert!(matches!(
        s.begin("room-1", &id, name, &sha, None),
        Err(StorageError::LengthRequired)
    ));
    // A body that is not the announced one: refused, and nothing is stored under any key.
    let mut up = s
        .begin("room-1", &id, name, &sha, Some(bytes.len() as u64))
        .unwrap();
    let mut forged = bytes.clone();
    forged[10] ^= 1;
    up.write(&forged).unwrap();
    assert!(matches!(s.commit(up, &sha), Err(StorageError::Digest(_))));
    let rec = format!("{PREFIX}room-1/{id}/");
    eventually_none(&g, &rec);

    for (name, bytes) in &all {
        assert_eq!(
            settled_call(|| upload(&s, &id, name, bytes)).unwrap(),
            Stored::Created,
            "{name}"
        );
    }
    // A stray: a key record the box dropped in its crash recovery, and other bytes under a
    // listed name. Neither is the recording's once it is complete.
    settled_call(|| upload(&s, &id, "frag-000099.key", b"dropped")).unwrap();
    settled_call(|| upload(&s, &id, &all[2].0, b"other bytes")).unwrap();
    // Content-addressed: the same object again is the same, and the store is not written.
    assert_eq!(upload(&s, &id, &all[1].0, &all[1].1).unwrap(), Stored::Same);
    // Keys someone else left beside the rooms and the recordings: listed, ordered among the
    // rooms' names (after them here), and not recordings.
    {
        let rt = runtime();
        let b = g.bucket(0);
        let empty: [u8; 32] = Sha256::digest(b"").into();
        for key in [
            format!("{PREFIX}zz-note"),
            format!("{PREFIX}room-1/zz-note"),
        ] {
            rt.block_on(settled(|| b.put(&key, Vec::new().into(), 0, &empty, false)))
                .unwrap();
        }
    }
    let (names, complete) = s.status("room-1", &id).unwrap();
    let mut expected: Vec<String> = all.iter().map(|(n, _)| n.clone()).collect();
    expected.push("frag-000099.key".into());
    expected.sort();
    assert_eq!(names, expected);
    assert!(!complete);
    assert_eq!(s.list("room-1").unwrap(), vec![(id.clone(), false)]);

    let manifest = std::fs::read(dir.join("manifest.json")).unwrap();
    let (receipt, stored) =
        settled_call(|| s.complete("room-1", &id, &manifest, &custody)).unwrap();
    assert_eq!(stored, Stored::Created);
    // The strays are gone; what the manifest names stays, with the manifest and receipt.
    let held = eventually(&g, &rec, |k| k.len() == all.len() + 2);
    assert!(!held.iter().any(|k| k.contains("frag-000099")), "{held:?}");
    let (again, stored) = s.complete("room-1", &id, &manifest, &custody).unwrap();
    assert_eq!(
        (again.as_slice(), stored),
        (receipt.as_slice(), Stored::Same)
    );
    let mut other = manifest.clone();
    other.extend_from_slice(b" ");
    assert!(matches!(
        s.complete("room-1", &id, &other, &custody),
        Err(StorageError::Conflict(_))
    ));
    // Complete: nothing more is taken into it.
    assert!(matches!(
        upload(&s, &id, &all[0].0, &all[0].1),
        Err(StorageError::Conflict(_))
    ));
    assert_eq!(s.manifest("room-1", &id).unwrap(), Some(manifest.clone()));
    assert_eq!(s.receipt("room-1", &id).unwrap(), Some(receipt));
    let f = &m.fragments[1];
    assert_eq!(
        s.read_object("room-1", &id, &f.file, &f.sha256, 1 << 20)
            .unwrap(),
        std::fs::read(dir.join(&f.file)).unwrap()
    );
    assert_eq!(s.list("room-1").unwrap(), vec![(id.clone(), true)]);
    let held = s.recordings().unwrap();
    assert_eq!((held.len(), held[0].complete), (1, true));
    assert_eq!(s.rooms_holding(&id).unwrap(), vec!["room-1".to_string()]);

    // Withdrawn: the notice stays, everything else goes, key records first.
    let shredded = s.withdraw("room-1", &id, b"{\"notice\":1}").unwrap();
    assert_eq!(shredded.key_records, 4, "{shredded:?}");
    eventually_none(&g, &rec);
    assert_eq!(
        s.withdrawn("room-1", &id).unwrap().as_deref(),
        Some(&b"{\"notice\":1}"[..])
    );
    assert!(matches!(
        upload(&s, &id, &all[0].0, &all[0].1),
        Err(StorageError::Withdrawn(_))
    ));
    assert!(s.list("room-1").unwrap().is_empty());
    assert!(s.recordings().unwrap().is_empty());
    // Its deletion is finished, so a start has nothing left to do but forget it.
    let finished = s.finish_deletions().unwrap();
    assert_eq!(finished.len(), 1);
    assert!(matches!(finished[0].outcome, Ok(None)));
}

#[test]
fn a_deletion_a_crash_interrupted_is_finished_at_the_next_start() {
    let g = Garage::serving();
    let t = tempfile::tempdir().unwrap();
    let s = storage(&g, t.path());
    let Storage::S3(s3) = &s else { unreachable!() };
    settled_call(|| s3.probe().map(|r| r.unwrap())).unwrap();
    let (_, room) = pki(t.path());
    let dir = recording(&t.path().join("box"), 2, &room);
    let id = neoflix_format::read_manifest(&dir).unwrap().recording_id;
    for (name, bytes) in objects(&dir) {
        settled_call(|| upload(&s, &id, &name, &bytes)).unwrap();
    }
    // The crash: the marker stored, nothing deleted yet.
    let rt = runtime();
    let b = g.bucket(0);
    let marker = format!("{PREFIX}room-1/.deleting/{id}");
    let empty: [u8; 32] = Sha256::digest(b"").into();
    rt.block_on(settled(|| {
        b.put(&marker, Vec::new().into(), 0, &empty, false)
    }))
    .unwrap();
    assert!(
        s.recordings().unwrap().is_empty(),
        "being deleted: not listed"
    );
    let finished = s.finish_deletions().unwrap();
    assert_eq!(finished.len(), 1);
    let done = finished[0].outcome.as_ref().unwrap().unwrap();
    assert_eq!(done.key_records, 3, "{done:?}");
    eventually_none(&g, PREFIX);
    assert!(s.finish_deletions().unwrap().is_empty());
    // A retention deletion from start to end.
    let dir = recording(&t.path().join("box2"), 1, &room);
    let id = neoflix_format::read_manifest(&dir).unwrap().recording_id;
    for (name, bytes) in objects(&dir) {
        settled_call(|| upload(&s, &id, &name, &bytes)).unwrap();
    }
    // A server whose prefix ("") holds this one's ("unit-a/") sees `unit-a` as a room and
    // `room-1` as one of its recordings; deleting that must touch nothing of this server's.
    let outer = Storage::configured(
        &StorageConfig {
            backend: StorageBackend::S3(Box::new(S3Config {
                endpoint: g.endpoint(0).parse().unwrap(),
                bucket: garage::BUCKET.into(),
                region: garage::REGION.into(),
                prefix: String::new(),
                path_style: true,
                access_key_id: Some(garage::KEY_ID.into()),
                secret_access_key_file: Some(t.path().join("secret")),
                ca: None,
            })),
            max_object_bytes: 1 << 20,
        },
        false,
    )
    .unwrap();
    let before = keys(&g, PREFIX);
    assert!(before.len() > 2, "{before:?}");
    settled_call(|| outer.delete("unit-a", "room-1")).unwrap();
    eventually(&g, PREFIX, |now| now == before.as_slice());
    let done = s.delete("room-1", &id).unwrap();
    assert_eq!(done.key_records, 2);
    eventually_none(&g, PREFIX);
}

/// A stand-in for a store that should not hold recordings (the real ones here all check
/// signed digests, have no versioning and give their keys what they are granted): it answers
/// every request with `answer(method, target, whether the body is the one its
/// x-amz-content-sha256 announces)`, one connection per request.
fn fake_store(answer: fn(&str, &str, bool) -> (u16, &'static str)) -> String {
    fake_store_keeping(answer).0
}

/// The objects a [`fake_store_keeping`] holds, by request target.
type Kept = Arc<Mutex<std::collections::HashMap<String, Vec<u8>>>>;

/// [`fake_store`], and what it holds: a PUT answered 2xx keeps its body, which a GET
/// answered `(200, "")` gives back and a DELETE answered 2xx removes.
fn fake_store_keeping(answer: fn(&str, &str, bool) -> (u16, &'static str)) -> (String, Kept) {
    use std::io::{BufRead, BufReader, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let kept: Kept = Default::default();
    let holds = kept.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { return };
            let mut r = BufReader::new(c);
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (method, target) = (
                parts.next().unwrap_or("").to_string(),
                parts.next().unwrap_or("").to_string(),
            );
            let mut len = 0usize;
            let mut announced = String::new();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                let h = h.to_ascii_lowercase();
                if let Some(v) = h.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if let Some(v) = h.strip_prefix("x-amz-content-sha256:") {
                    announced = v.trim().to_string();
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            let signed = announced == hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body));
            let (status, text) = answer(&method, &target, signed);
            let mut kept = holds.lock().unwrap();
            let text = match (method.as_str(), status, text) {
                ("PUT", 200..=299, _) => {
                    kept.insert(target.clone(), body);
                    Vec::new()
                }
                ("GET", 200, "") => kept.get(&target).cloned().unwrap_or_default(),
                ("DELETE", 200..=299, _) => {
                    kept.remove(&target);
                    Vec::new()
                }
                _ => text.as_bytes().to_vec(),
            };
            drop(kept);
            let _ = write!(
                r.get_mut(),
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                if method == "HEAD" { 0 } else { text.len() },
            );
            if method != "HEAD" {
                let _ = r.get_mut().write_all(&text);
            }
        }
    });
    (format!("http://{addr}"), kept)
}

fn fake_storage(endpoint: &str, dir: &Path) -> Storage {
    let secret = dir.join("secret");
    std::fs::write(&secret, "secret\n").unwrap();
    Storage::configured(
        &StorageConfig {
            backend: StorageBackend::S3(Box::new(S3Config {
                endpoint: endpoint.parse().unwrap(),
                bucket: "neoflix".into(),
                region: "us-east-1".into(),
                prefix: String::new(),
                path_style: true,
                access_key_id: Some("AKIDEXAMPLE".into()),
                secret_access_key_file: Some(secret),
                ca: None,
            })),
            max_object_bytes: 1 << 20,
        },
        false,
    )
    .unwrap()
}

/// A store that checks signed digests, as Garage does, and lets the key do everything.
fn obliging(method: &str, target: &str, signed: bool) -> (u16, &'static str) {
    match (method, target) {
        ("GET", t) if t.ends_with("?versioning=") => (200, "<VersioningConfiguration/>"),
        ("GET", t) if t.contains("list-type=2") => (
            200,
            "<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>",
        ),
        ("PUT", _) if !signed => (
            400,
            "<Error><Code>XAmzContentSHA256Mismatch</Code><Message>no</Message></Error>",
        ),
        ("DELETE", _) => (204, ""),
        _ => (200, ""),
    }
}

const DENIED: (u16, &str) = (
    403,
    "<Error><Code>AccessDenied</Code><Message>no</Message></Error>",
);

/// A key that may not read an object back, list the bucket or delete: the server does not
/// start, and names the permission, rather than failing the first completion, review or
/// withdrawal. (A key without s3:DeleteObject passed the probe with a warning, and every
/// withdrawal on it then failed.) The same store with every permission passes.
#[test]
fn the_probe_names_the_permission_a_key_lacks() {
    let t = tempfile::tempdir().unwrap();
    let (endpoint, kept) = fake_store_keeping(obliging);
    let s = fake_storage(&endpoint, t.path());
    let Storage::S3(s3) = &s else { unreachable!() };
    assert_eq!(s3.probe().unwrap(), Ok(()));
    assert!(kept.lock().unwrap().is_empty(), "the probe left its object");
    for ((endpoint, kept), says, left) in [
        (
            fake_store_keeping(|m, t, s| match m == "GET" && t.contains("/.probe/") {
                true => DENIED,
                false => obliging(m, t, s),
            }),
            "the key may not read an object back (s3:GetObject)",
            false,
        ),
        (
            fake_store_keeping(|m, t, s| match m == "GET" && t.contains("list-type=2") {
                true => DENIED,
                false => obliging(m, t, s),
            }),
            "the key may not list the bucket (s3:ListBucket)",
            false,
        ),
        (
            fake_store_keeping(|m, t, s| match m == "DELETE" {
                true => DENIED,
                false => obliging(m, t, s),
            }),
            "the key may not delete an object (s3:DeleteObject)",
            true,
        ),
        (
            fake_store_keeping(|m, t, s| match m == "PUT" {
                true => DENIED,
                false => obliging(m, t, s),
            }),
            "the key may not write an object (s3:PutObject)",
            false,
        ),
    ] {
        let s = fake_storage(&endpoint, t.path());
        let Storage::S3(s3) = &s else { unreachable!() };
        let why = s3.probe().unwrap().unwrap_err();
        assert!(why.contains(says) && why.contains("AccessDenied"), "{why}");
        assert_eq!(why.contains("may be left in the bucket"), left, "{why}");
        assert_eq!(kept.lock().unwrap().is_empty(), !left);
        let Err(e) = s.begin("room-1", "rec-1", "frag-000001.nfx", &[0; 32], Some(10)) else {
            panic!("an upload taken before the store was checked");
        };
        assert!(
            matches!(e, StorageError::Store(ref w) if w.contains("not checked yet")),
            "{e}"
        );
    }
    // Where the bucket itself refuses the key (AWS and MinIO answer HEAD so without
    // s3:ListBucket; a clock off at boot is refused so too), the server waits on it, and says
    // what may be wrong.
    let refusing = fake_store(|m, t, s| match m == "HEAD" {
        true => DENIED,
        false => obliging(m, t, s),
    });
    let s = fake_storage(&refusing, t.path());
    let Storage::S3(s3) = &s else { unreachable!() };
    match s3.probe() {
        Err(StorageError::Store(why)) => {
            assert!(
                why.contains("s3:ListBucket") && why.contains("clock"),
                "{why}"
            )
        }
        other => panic!("{other:?}"),
    }
}

/// A store whose DELETEs fail for a while: the probe names the object it leaves, and when it
/// asks again deletes that object before it writes another (rather than leaving one each
/// time it asks); a DELETE then refused for good names the permission; the probe passes once
/// the object could be deleted.
#[test]
fn a_probe_object_the_store_would_not_delete_is_deleted_before_the_next_is_written() {
    // What a DELETE gets: 0 busy, 1 refused, 2 done.
    static DELETES: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
    use std::sync::atomic::Ordering::Relaxed;
    let t = tempfile::tempdir().unwrap();
    let (endpoint, kept) = fake_store_keeping(|m, t, s| match (m, DELETES.load(Relaxed)) {
        ("DELETE", 0) => (
            503,
            "<Error><Code>SlowDown</Code><Message>busy</Message></Error>",
        ),
        ("DELETE", 1) => DENIED,
        _ => obliging(m, t, s),
    });
    let s = fake_storage(&endpoint, t.path());
    let Storage::S3(s3) = &s else { unreachable!() };
    for _ in 0..2 {
        match s3.probe() {
            Err(StorageError::Store(why)) => assert!(
                why.contains("may be left in the bucket")
                    && why.contains("before it writes anything more"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(kept.lock().unwrap().len(), 1, "another object written");
    }
    DELETES.store(1, Relaxed);
    let why = s3.probe().unwrap().unwrap_err();
    assert!(
        why.contains("(s3:DeleteObject)") && why.contains("delete it by hand"),
        "{why}"
    );
    assert_eq!(kept.lock().unwrap().len(), 1, "another object written");
    DELETES.store(2, Relaxed);
    assert_eq!(s3.probe().unwrap(), Ok(()));
    assert!(
        kept.lock().unwrap().is_empty(),
        "{:?}",
        kept.lock().unwrap().keys()
    );
}

/// A store that keeps a body whatever digest its request was signed with, one whose bucket
/// keeps old versions, and one that refuses the probe for another reason: the server will
/// not keep recordings on any of them, and says why.
#[test]
fn the_probe_refuses_a_store_that_does_not_check_digests_or_keeps_versions() {
    let t = tempfile::tempdir().unwrap();
    let careless = fake_store(|method, target, _| match (method, target) {
        ("GET", t) if t.ends_with("?versioning=") => (200, "<VersioningConfiguration/>"),
        _ => (200, ""),
    });
    let versioned = fake_store(|method, target, _| match (method, target) {
        ("GET", t) if t.ends_with("?versioning=") => (
            200,
            "<VersioningConfiguration><Status>Suspended</Status></VersioningConfiguration>",
        ),
        _ => (200, ""),
    });
    let other = fake_store(|method, target, _| match (method, target) {
        ("GET", t) if t.ends_with("?versioning=") => (200, "<VersioningConfiguration/>"),
        ("PUT", _) => (
            400,
            "<Error><Code>InvalidArgument</Code><Message>no</Message></Error>",
        ),
        _ => (200, ""),
    });
    let locked_down = fake_store(|method, target, _| match (method, target) {
        ("GET", t) if t.ends_with("?versioning=") => (
            403,
            "<Error><Code>AccessDenied</Code><Message>no</Message></Error>",
        ),
        _ => (200, ""),
    });
    let busy = fake_store(|method, target, _| match (method, target) {
        ("GET", t) if t.ends_with("?versioning=") => (200, "<VersioningConfiguration/>"),
        ("PUT", _) => (
            503,
            "<Error><Code>ServiceUnavailable</Code><Message>quorum</Message></Error>",
        ),
        _ => (200, ""),
    });
    // Busy is no verdict: asked again later (the server waits, and starts once it answers).
    let s = fake_storage(&busy, t.path());
    let Storage::S3(s3) = &s else { unreachable!() };
    assert!(matches!(s3.probe(), Err(StorageError::Store(_))));
    for (endpoint, says) in [
        (careless, "does not check x-amz-content-sha256"),
        (versioned, "versioning is Suspended"),
        (other, "not for its digest"),
        (locked_down, "s3:GetBucketVersioning"),
    ] {
        let s = fake_storage(&endpoint, t.path());
        let Storage::S3(s3) = &s else { unreachable!() };
        let why = s3.probe().unwrap().unwrap_err();
        assert!(why.contains(says), "{why}");
        // And it takes no upload.
        let Err(e) = s.begin("room-1", "rec-1", "frag-000001.nfx", &[0; 32], Some(10)) else {
            panic!("an upload taken before the store was checked");
        };
        assert!(
            matches!(e, StorageError::Store(ref w) if w.contains("not checked yet")),
            "{e}"
        );
    }
}
