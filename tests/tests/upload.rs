//! The department side: real neoflix-ingest over real mutual TLS with certificates made by
//! `neoflix pki` in the test, the real neoflixd uplink, curl as an independent client.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::Duration;

use neoflix_control::Request;
use neoflix_e2e::{Daemon, Lab, curl, ffmpeg_errors, ffprobe, neoflix, wait_until};

const CAPTURE: &str = "source = \"test\"\nwidth = 320\nheight = 240\nfps = 15\nbitrate_kbps = 300";

fn server_recordings(lab: &Lab, device: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(lab.path("server").join(device))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn complete(dir: &Path) -> bool {
    dir.join("manifest.json").exists()
}

fn assert_server_copy_plays(lab: &Lab, dir: &Path) -> neoflix_store::Manifest {
    let m = neoflix_format::verify(dir)
        .expect("the server's copy verifies")
        .manifest;
    let out = lab.path(&format!("{}.mp4", m.recording_id));
    let e = lab.export(dir, &out);
    assert!(
        e.status.success(),
        "export of the server copy: {}",
        String::from_utf8_lossy(&e.stderr)
    );
    assert_eq!(ffmpeg_errors(&out), "");
    assert!((ffprobe(&out).duration - m.duration_secs).abs() <= 1.0);
    m
}

/// A CA, a running ingest server and a ready room box (3 s pre-roll) uploading to it.
fn box_uploading_to_ingest() -> (Lab, neoflix_e2e::Ingest, Daemon) {
    let lab = Lab::new();
    lab.pki(&["room-e2e"]);
    let mut ingest = lab.ingest_config(64 << 20);
    ingest.start();
    lab.config(CAPTURE, 3, &lab.upload_section(&ingest, "room-e2e"));
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(60));
    (lab, ingest, d)
}

#[test]
fn a_recording_arrives_while_it_runs_and_leaves_the_box_after_the_receipt() {
    let (lab, ingest, d) = box_uploading_to_ingest();
    let id = d.ctl(Request::Start {}).recording.unwrap();
    let srv = lab.path("server/room-e2e").join(&id);
    // Live: fragments reach the server while the recording still runs.
    wait_until(
        "fragments on the server during the recording",
        Duration::from_secs(30),
        || {
            fs::read_dir(&srv)
                .map(|l| {
                    l.filter_map(|e| e.ok())
                        .filter(|e| e.file_name().to_string_lossy().ends_with(".nfx"))
                        .count()
                        >= 6
                })
                .unwrap_or(false)
        },
        &|| d.log_text(),
    );
    assert!(!complete(&srv));
    assert!(d.status().recording.is_some());
    // What a crash of the server mid-upload leaves behind; completion must sweep it.
    let stale = srv.join(".frag-000099.nfx.0123456789abcdef.tmp");
    fs::write(&stale, b"half an upload").unwrap();
    assert!(d.ctl(Request::Stop {}).ok);
    wait_until(
        "the recording to be complete on the server",
        Duration::from_secs(30),
        || complete(&srv),
        &|| d.log_text() + &ingest.log_text(),
    );
    wait_until(
        "the box to delete its copy",
        Duration::from_secs(30),
        || lab.recordings().is_empty(),
        &|| d.log_text(),
    );
    let s = d.status();
    let q = s.upload.expect("upload status");
    assert_eq!((q.recordings, q.delivered), (0, 1));
    assert!(q.last_success_utc.is_some());
    assert!(s.cert_days_left.unwrap() > 300);
    // Bit-identical: every object hashes to what the box's manifest says it sealed.
    let m = assert_server_copy_plays(&lab, &srv);
    assert_eq!(m.device_id, "room-e2e");
    // The receipt is the server's signature over what it stored, and the box logged it.
    let (signed, receipt) =
        neoflix_format::SignedReceipt::from_json(&fs::read(srv.join("receipt.json")).unwrap())
            .unwrap();
    let trust = neoflix_format::TrustAnchors::from_pem(&fs::read(lab.ca()).unwrap(), None).unwrap();
    let server = trust
        .check_server(
            neoflix_format::custody::Purpose::Receipt,
            &signed.signature,
            signed.receipt.as_bytes(),
            "127.0.0.1",
            std::time::SystemTime::now(),
        )
        .expect("a receipt signed by the server's certificate");
    assert_eq!(server.name, "127.0.0.1");
    assert_eq!(
        (receipt.signed_by.as_str(), receipt.device_id.as_str()),
        ("room-e2e", "room-e2e")
    );
    let log = d.log_text();
    assert!(
        log.contains("the server's signed receipt checked")
            && log.contains(&receipt.manifest_sha256),
        "{log}"
    );
    assert!(
        !stale.exists(),
        "a stale temporary file survived completion"
    );
    ingest.wait_log("the receipt for room-e2e", |log| {
        log.contains("recording complete, receipt issued") && log.contains("device=room-e2e")
    });
    assert_eq!(d.terminate(), 0);
}

#[test]
fn restarts_of_either_side_mid_upload_lose_nothing_and_duplicate_nothing() {
    let (lab, mut ingest, d) = box_uploading_to_ingest();
    let first = d.ctl(Request::Start {}).recording.unwrap();
    sleep(Duration::from_secs(3));
    ingest.kill9();
    sleep(Duration::from_secs(3));
    ingest.start();
    sleep(Duration::from_secs(3));
    d.kill9();
    let mut d: Daemon = lab.start();
    d.wait_for("the control socket", Duration::from_secs(30), |_| true);
    // The interrupted recording is sealed at start-up and delivered; then a second, normal one.
    let srv_first = lab.path("server/room-e2e").join(&first);
    wait_until(
        "the interrupted recording on the server",
        Duration::from_secs(60),
        || complete(&srv_first),
        &|| d.log_text() + &ingest.log_text(),
    );
    d.wait_ready(Duration::from_secs(60));
    let second = d.ctl(Request::Start {}).recording.unwrap();
    sleep(Duration::from_secs(3));
    assert!(d.ctl(Request::Stop {}).ok);
    let srv_second = lab.path("server/room-e2e").join(&second);
    wait_until(
        "the second recording on the server",
        Duration::from_secs(60),
        || complete(&srv_second),
        &|| d.log_text(),
    );
    wait_until(
        "the box to be empty",
        Duration::from_secs(30),
        || lab.recordings().is_empty(),
        &|| d.log_text(),
    );
    assert_eq!(
        server_recordings(&lab, "room-e2e"),
        vec![srv_first.clone(), srv_second.clone()]
    );
    let m = assert_server_copy_plays(&lab, &srv_first);
    assert_eq!(m.status, neoflix_store::Status::Interrupted);
    assert!(m.fragments.len() >= 6, "{} fragments", m.fragments.len());
    assert_server_copy_plays(&lab, &srv_second);
    // Nothing half-written is left where it could be taken for an object.
    for dir in [&srv_first, &srv_second] {
        for f in fs::read_dir(dir).unwrap() {
            let n = f.unwrap().file_name().to_string_lossy().to_string();
            assert!(!n.starts_with('.'), "{n} left in {}", dir.display());
        }
    }
    assert_eq!(d.terminate(), 0);
}

#[test]
fn the_server_refuses_strangers_and_keeps_devices_apart() {
    let lab = Lab::new();
    let ca = lab.pki(&["room-a", "room-b", "room-old", "room-revoked"]);
    // A second CA that this server does not trust.
    let other = lab.path("other-ca");
    assert!(
        neoflix(&["pki", "init", "--dir", other.to_str().unwrap()])
            .status
            .success()
    );
    assert!(
        neoflix(&[
            "pki",
            "issue",
            "--dir",
            other.to_str().unwrap(),
            "--device",
            "room-a"
        ])
        .status
        .success()
    );
    let out = neoflix(&[
        "pki",
        "issue",
        "--dir",
        ca.to_str().unwrap(),
        "--device",
        "room-expired",
        "--days",
        "-1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        neoflix(&[
            "pki",
            "revoke",
            "--dir",
            ca.to_str().unwrap(),
            "room-revoked"
        ])
        .status
        .success()
    );
    let mut ingest = lab.ingest_config(1 << 20);
    ingest.start();
    let cert = |dir: &Path, name: &str| {
        (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        )
    };
    let a = cert(&ca, "room-a");
    let b = cert(&ca, "room-b");
    let a_ = Some((a.0.as_path(), a.1.as_path()));
    let b_ = Some((b.0.as_path(), b.1.as_path()));

    // Refused at the handshake, and logged.
    assert_eq!(
        curl(&lab, &ingest, None, &[], "/v1/recordings").0,
        0,
        "no certificate"
    );
    for (dir, name) in [
        (&other, "room-a"),
        (&ca, "room-expired"),
        (&ca, "room-revoked"),
    ] {
        let (c, k) = cert(dir, name);
        assert_eq!(
            curl(&lab, &ingest, Some((&c, &k)), &[], "/v1/recordings").0,
            0,
            "{} {name} was let in",
            dir.display()
        );
    }
    ingest.wait_log("every refused handshake", |log| {
        log.matches("TLS handshake refused").count() >= 4
            && log.to_lowercase().contains("expired")
            && log.to_lowercase().contains("revoked")
    });

    // A's object, with the right digest.
    let body = lab.path("body");
    // The server takes only what starts as a sealed object does (it cannot open any).
    let sealed = |seq: u64, plain: &[u8]| {
        let id = neoflix_seal::ObjectId {
            stream: [9; 16],
            seq,
            kind: neoflix_seal::Kind::Fragment,
        };
        neoflix_seal::seal(&id, plain).unwrap().1
    };
    let a_bytes = sealed(0, b"A's video");
    fs::write(&body, &a_bytes).unwrap();
    let digest = |p: &Path| {
        use base64::Engine as _;
        let d = <sha2::Sha256 as sha2::Digest>::digest(fs::read(p).unwrap());
        format!(
            "Content-Digest: sha-256=:{}:",
            base64::engine::general_purpose::STANDARD.encode(d)
        )
    };
    let put = |who, path: &str, file: &Path, digest_header: &str| {
        curl(
            &lab,
            &ingest,
            who,
            &[
                "-X",
                "PUT",
                "-H",
                digest_header,
                "--data-binary",
                &format!("@{}", file.display()),
            ],
            path,
        )
    };
    let obj = "/v1/recordings/rec-1/objects/frag-000000.nfx";
    assert_eq!(put(a_, obj, &body, &digest(&body)).0, 201);
    assert_eq!(
        put(a_, obj, &body, &digest(&body)).0,
        200,
        "the same again is fine"
    );
    let other_body = lab.path("other");
    fs::write(&other_body, sealed(0, b"different video")).unwrap();
    assert_eq!(put(a_, obj, &other_body, &digest(&other_body)).0, 409);
    assert_eq!(
        fs::read(lab.path("server/room-a/rec-1/frag-000000.nfx")).unwrap(),
        a_bytes,
        "the original is intact"
    );
    assert_eq!(
        put(
            a_,
            "/v1/recordings/rec-1/objects/frag-000001.nfx",
            &body,
            &digest(&other_body)
        )
        .0,
        400,
        "wrong digest"
    );
    assert_eq!(
        put(
            a_,
            "/v1/recordings/rec-1/objects/frag-000001.nfx",
            &body,
            "X-Nothing: 1"
        )
        .0,
        400,
        "no digest"
    );
    assert!(!lab.path("server/room-a/rec-1/frag-000001.nfx").exists());

    // B sees nothing of A, and writing "the same" recording lands in B's own space.
    assert_eq!(curl(&lab, &ingest, b_, &[], "/v1/recordings/rec-1").0, 404);
    let (code, list) = curl(&lab, &ingest, b_, &[], "/v1/recordings");
    assert_eq!((code, list.contains("rec-1")), (200, false), "{list}");
    assert_eq!(put(b_, obj, &other_body, &digest(&other_body)).0, 201);
    assert_eq!(
        fs::read(lab.path("server/room-a/rec-1/frag-000000.nfx")).unwrap(),
        a_bytes
    );
    let (code, list) = curl(&lab, &ingest, a_, &[], "/v1/recordings");
    assert_eq!(code, 200);
    assert!(list.contains("rec-1"), "{list}");

    // Names that try to leave the device's directory.
    let long = format!("/v1/recordings/{}/objects/frag-000000.nfx", "x".repeat(300));
    for path in [
        "/v1/recordings/../objects/frag-000000.nfx",
        "/v1/recordings/%2e%2e/objects/frag-000000.nfx",
        "/v1/recordings/a%2fb/objects/frag-000000.nfx",
        "/v1/recordings/rec-1/objects/..%2f..%2froom-b%2frec-1%2ffrag-000000.nfx",
        "/v1/recordings/rec-1/objects/manifest.json",
        "/v1/recordings/.hidden/objects/frag-000000.nfx",
        long.as_str(),
    ] {
        let (code, _) = put(a_, path, &body, &digest(&body));
        assert!(code == 400 || code == 404, "{path} -> {code}");
        assert_ne!(code, 0);
    }
    assert_eq!(
        put(
            a_,
            "/v1/recordings/%2e%2e/objects/frag-000000.nfx",
            &body,
            &digest(&body)
        )
        .0,
        400
    );

    // Over the size limit: 413, nothing stored.
    let big = lab.path("big");
    fs::write(&big, vec![7u8; 3 << 20]).unwrap();
    assert_eq!(
        put(
            a_,
            "/v1/recordings/rec-1/objects/frag-000002.nfx",
            &big,
            &digest(&big)
        )
        .0,
        413
    );
    // Announced by Content-Length or not (chunked): the server does not buffer what it refuses.
    let huge = lab.path("huge");
    // A sealed header, so that the size limit is what refuses it.
    let mut huge_bytes = a_bytes[..neoflix_seal::HEADER_LEN].to_vec();
    huge_bytes.resize(200 << 20, 9);
    fs::write(&huge, &huge_bytes).unwrap();
    drop(huge_bytes);
    let before = ingest.peak_rss_kib();
    let (code, _) = curl(
        &lab,
        &ingest,
        a_,
        &[
            "-X",
            "PUT",
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            &digest(&big),
            "--data-binary",
            &format!("@{}", huge.display()),
        ],
        "/v1/recordings/rec-1/objects/frag-000003.nfx",
    );
    assert_eq!(code, 413);
    let grown = ingest.peak_rss_kib().saturating_sub(before);
    assert!(
        grown < 32 * 1024,
        "the server's peak memory grew by {grown} KiB on a refused 200 MiB body"
    );
    assert!(!lab.path("server/room-a/rec-1/frag-000003.nfx").exists());
    assert!(!lab.path("server/room-a/rec-1/frag-000002.nfx").exists());
    // A manifest that does not match what is stored is refused with the reason.
    let (code, why) = curl(
        &lab,
        &ingest,
        a_,
        &["-X", "PUT", "--data-binary", "{\"format\":\"x\"}"],
        "/v1/recordings/rec-1/manifest",
    );
    assert_eq!(code, 400, "{why}");
}

/// The server's disk fills up: it refuses cleanly, the box keeps recording and keeps its data,
/// and the upload completes once space returns.
#[test]
fn a_full_server_disk_delays_delivery_and_loses_nothing() {
    let lab = Lab::new();
    lab.pki(&["room-e2e"]);
    let server = lab.path("server");
    fs::create_dir_all(&server).unwrap();
    let mount = Mount::tmpfs(&server, "4m");
    let filler = server.join("filler");
    // Leave almost nothing free.
    let _ = fs::write(&filler, vec![0u8; 4 << 20]);
    let mut ingest = lab.ingest_config(64 << 20);
    ingest.start();
    lab.config(CAPTURE, 2, &lab.upload_section(&ingest, "room-e2e"));
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(60));
    let id = d.ctl(Request::Start {}).recording.unwrap();
    sleep(Duration::from_secs(4));
    assert!(d.ctl(Request::Stop {}).ok);
    d.wait_for(
        "the upload to report the full disk",
        Duration::from_secs(60),
        |s| {
            s.upload
                .as_ref()
                .and_then(|u| u.last_error.as_deref())
                .is_some_and(|e| e.contains("507"))
        },
    );
    // The box keeps recording meanwhile, and keeps the undelivered recording.
    let second = d.ctl(Request::Start {}).recording.unwrap();
    sleep(Duration::from_secs(2));
    assert!(d.ctl(Request::Stop {}).ok);
    let local: Vec<String> = lab
        .recordings()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into())
        .collect();
    assert!(local.contains(&id) && local.contains(&second), "{local:?}");
    ingest.wait_log("storage full", |log| log.contains("storage full"));

    fs::remove_file(&filler).unwrap();
    for rec in [&id, &second] {
        let srv = server.join("room-e2e").join(rec);
        wait_until(
            "delivery after space returned",
            Duration::from_secs(120),
            || complete(&srv),
            &|| d.log_text(),
        );
        assert_server_copy_plays(&lab, &srv);
    }
    wait_until(
        "the box to be empty",
        Duration::from_secs(30),
        || lab.recordings().is_empty(),
        &|| d.log_text(),
    );
    assert_eq!(d.terminate(), 0);
    drop(ingest);
    drop(mount);
}

/// A small tmpfs, unmounted when dropped (the tests run as root, as CI does).
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Mount {
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount runs");
        assert!(st.success(), "mounting a tmpfs needs root");
        Mount(dir.to_owned())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Issue 15: a finalized recording whose id the server already held complete, with another
/// manifest (a clock stepped back before ids had a random part, a box restored from a backup),
/// was refused with 409 for ever and never left the box. It is renamed, signed again and
/// delivered as a recording of its own; its marker's label still opens; the other is untouched.
#[test]
fn a_recording_whose_id_the_server_already_holds_is_renamed_and_delivered() {
    let (lab, mut ingest, mut d) = box_uploading_to_ingest();
    let first = d.ctl(Request::Start {}).recording.unwrap();
    sleep(Duration::from_secs(2));
    assert!(d.ctl(Request::Stop {}).ok);
    let first_on_server = lab.path("server/room-e2e").join(&first);
    wait_until(
        "the first recording to be delivered",
        Duration::from_secs(60),
        || lab.recordings().is_empty() && complete(&first_on_server),
        &|| d.log_text() + &ingest.log_text(),
    );
    let first_manifest = fs::read(first_on_server.join("manifest.json")).unwrap();
    // The second, made while the server is away, with a labelled marker.
    ingest.kill9();
    let second = d.ctl(Request::Start {}).recording.unwrap();
    sleep(Duration::from_millis(1500));
    assert!(
        d.ctl(Request::Mark {
            label: "adrenaline".into()
        })
        .ok
    );
    sleep(Duration::from_millis(1500));
    assert!(d.ctl(Request::Stop {}).ok);
    d.wait_for(
        "the second recording to be finalized",
        Duration::from_secs(30),
        |s| s.recordings_finalized >= 2,
    );
    assert_eq!(d.terminate(), 0);
    // It gets the delivered recording's id, as a clock stepped back could once give it.
    let signer = neoflix_format::SigningIdentity::from_pem(
        &fs::read(lab.path("ca/room-e2e.crt")).unwrap(),
        &fs::read(lab.path("ca/room-e2e.key")).unwrap(),
    )
    .unwrap();
    neoflix_store::rename(
        &lab.path("recordings"),
        &second,
        &first,
        Some(&signer),
        std::time::SystemTime::now(),
    )
    .unwrap();

    ingest.start();
    let d = lab.start();
    wait_until(
        "the box to deliver it under a new id",
        Duration::from_secs(60),
        || lab.recordings().is_empty(),
        &|| d.log_text() + &ingest.log_text(),
    );
    let log = d.log_text();
    assert!(
        log.contains("the server holds another recording under this id: renamed"),
        "{log}"
    );
    let on_server = server_recordings(&lab, "room-e2e");
    assert_eq!(on_server.len(), 2, "{on_server:?}");
    assert_eq!(
        fs::read(first_on_server.join("manifest.json")).unwrap(),
        first_manifest,
        "the recording the server held is untouched"
    );
    let renamed = on_server.iter().find(|p| **p != first_on_server).unwrap();
    let m = assert_server_copy_plays(&lab, renamed);
    assert_ne!(m.recording_id, first);
    // The time people read stays; the random part is new.
    assert_eq!(m.recording_id[..first.len() - 8], first[..first.len() - 8]);
    assert_eq!(m.renamed_from.as_deref(), Some(second.as_str()));
    assert_eq!(m.markers.len(), 1);
    let dept =
        neoflix_open::DepartmentSecretKey::from_file_text(&fs::read_to_string(lab.key()).unwrap())
            .unwrap();
    let sealed = m.markers[0].sealed_label.as_deref().unwrap();
    assert_eq!(
        neoflix_open::open_label(&dept, m.label_recording_id(), &m.markers[0].utc, sealed).unwrap(),
        "adrenaline"
    );
    let v = neoflix(&[
        "verify",
        renamed.to_str().unwrap(),
        "--key",
        lab.key().to_str().unwrap(),
        "--ca",
        lab.ca().to_str().unwrap(),
    ]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    assert_eq!(d.terminate(), 0);
}

/// A server with a certificate from the department CA (a buggy ingest, a misconfigured proxy,
/// a compromised host) that answers every request `200` with an endless chunked body: on
/// `addr`, until the test ends.
fn endless_answers(lab: &Lab, addr: &str) {
    tls_server(lab, addr, |tls, _head| {
        use std::io::Write;
        let chunk = vec![b'{'; 65536];
        let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        loop {
            out.extend_from_slice(b"10000\r\n");
            out.extend_from_slice(&chunk);
            out.extend_from_slice(b"\r\n");
            if tls.write_all(&out).is_err() {
                return;
            }
            out.clear();
        }
    });
}

type Tls = rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>;

/// A TLS server with the lab's certificate for 127.0.0.1 on `addr`, a thread a connection:
/// `answer` gets the start of each request (its head) and writes what it likes.
fn tls_server(lab: &Lab, addr: &str, answer: fn(&mut Tls, &str)) {
    use rustls::pki_types::pem::PemObject;
    let ca = lab.path("ca");
    let certs: Vec<rustls::pki_types::CertificateDer<'static>> =
        rustls::pki_types::CertificateDer::pem_file_iter(ca.join("127.0.0.1.crt"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(ca.join("127.0.0.1.key")).unwrap();
    let cfg = std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap(),
    );
    let listener = std::net::TcpListener::bind(addr).unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(cfg).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut buf = vec![0u8; 65536];
                let n = std::io::Read::read(&mut tls, &mut buf).unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                answer(&mut tls, &head);
            });
        }
    });
}

/// Writes one JSON answer (`status` is the status line's rest, with any extra header lines)
/// and closes the connection.
fn answer_json(tls: &mut Tls, status: &str, body: &str) {
    use std::io::Write;
    let _ = tls.write_all(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let _ = tls.flush();
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

/// The `[upload]` section for `room-e2e` made for `ingest`, sending to `servers` (addresses,
/// in that order) instead.
fn upload_to_servers(lab: &Lab, ingest: &neoflix_e2e::Ingest, servers: &[&str]) -> String {
    let list: Vec<String> = servers.iter().map(|a| format!("\"https://{a}\"")).collect();
    lab.upload_section(ingest, "room-e2e").replace(
        &format!("url = \"https://{}\"", ingest.addr),
        &format!("url = [{}]", list.join(", ")),
    )
}

/// Issue 15: a server that answered `GET /v1/recordings/<id>` with `200` and an endless
/// chunked body drove neoflixd from 27 MB to 22 GB in 60 s. Every answer is read up to its
/// known bound; past it the pass fails, is retried with back-off, and the recording stays on
/// the box.
#[test]
fn an_endless_answer_from_the_server_is_cut_off_and_the_recording_kept() {
    let lab = Lab::new();
    lab.pki(&["room-e2e"]);
    let ingest = lab.ingest_config(64 << 20);
    endless_answers(&lab, &ingest.addr);
    lab.config(CAPTURE, 2, &lab.upload_section(&ingest, "room-e2e"));
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(60));
    assert!(d.ctl(Request::Start {}).ok);
    sleep(Duration::from_secs(2));
    assert!(d.ctl(Request::Stop {}).ok);
    let s = d.wait_for(
        "the upload to fail on the endless answer",
        Duration::from_secs(60),
        |s| {
            s.upload
                .as_ref()
                .and_then(|u| u.last_error.as_deref())
                .is_some_and(|e| e.contains("answer"))
        },
    );
    let error = s.upload.unwrap().last_error.unwrap();
    assert!(error.contains("larger than"), "{error}");
    // Several passes, each reading an answer to its bound and giving up.
    wait_until(
        "a third failed pass",
        Duration::from_secs(60),
        || {
            d.log_text()
                .matches("retrying (recordings stay on the box")
                .count()
                >= 3
        },
        &|| d.log_text(),
    );
    let status = fs::read_to_string(format!("/proc/{}/status", d.pid().unwrap())).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(
        rss_kib < 512 * 1024,
        "neoflixd grew to {rss_kib} KiB reading the answers ({error})"
    );
    assert_eq!(lab.recordings().len(), 1, "the recording stays on the box");
    assert_eq!(d.terminate(), 0);
}

/// Issue 15: a certificate the box refused showed only as "error sending request": the check
/// that failed is named.
#[test]
fn a_refused_server_certificate_is_named_in_the_status() {
    let lab = Lab::new();
    lab.pki(&["room-e2e"]);
    let mut ingest = lab.ingest_config(64 << 20);
    ingest.start();
    // The box trusts another CA than the one that issued the server's certificate.
    let other = Lab::new();
    other.pki(&["someone"]);
    let upload = lab.upload_section(&ingest, "room-e2e").replace(
        &lab.ca().display().to_string(),
        &other.ca().display().to_string(),
    );
    lab.config(CAPTURE, 2, &upload);
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(60));
    assert!(d.ctl(Request::Start {}).ok);
    sleep(Duration::from_secs(1));
    assert!(d.ctl(Request::Stop {}).ok);
    let s = d.wait_for("the upload error", Duration::from_secs(60), |s| {
        s.upload.as_ref().is_some_and(|u| u.last_error.is_some())
    });
    let error = s.upload.unwrap().last_error.unwrap();
    assert!(
        error.contains("invalid peer certificate: BadSignature"),
        "{error}"
    );
    assert_eq!(d.terminate(), 0);
}

/// Found by review: a server that answers every manifest with `409` (and says every recording
/// is complete) had the box rename and upload the recording again at once, in a loop. A
/// recording is renamed once; after that a `409` is retried with back-off.
#[test]
fn a_server_that_refuses_every_manifest_gets_one_rename_not_a_loop() {
    let lab = Lab::new();
    lab.pki(&["room-e2e"]);
    let ingest = lab.ingest_config(64 << 20);
    tls_server(&lab, &ingest.addr, |tls, head| {
        let id = head
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.split('/').nth(3))
            .unwrap_or("")
            .to_string();
        let (status, body) = if head.starts_with("GET ") {
            (
                "200 OK",
                format!(r#"{{"recording_id":"{id}","complete":true,"objects":[]}}"#),
            )
        } else {
            (
                "409 Conflict",
                r#"{"error":"conflict: the recording is complete with another manifest"}"#
                    .to_string(),
            )
        };
        answer_json(tls, status, &body);
    });
    lab.config(CAPTURE, 2, &lab.upload_section(&ingest, "room-e2e"));
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(60));
    assert!(d.ctl(Request::Start {}).ok);
    sleep(Duration::from_secs(1));
    assert!(d.ctl(Request::Stop {}).ok);
    d.wait_for("the recording finalized", Duration::from_secs(30), |s| {
        s.recordings_finalized == 1
    });
    sleep(Duration::from_secs(15));
    let log = d.log_text();
    assert_eq!(
        log.matches("the server holds another recording under this id: renamed")
            .count(),
        1,
        "{log}"
    );
    let s = d.status();
    let error = s.upload.unwrap().last_error.unwrap_or_default();
    assert!(error.contains("HTTP 409"), "{error}");
    assert_eq!(lab.recordings().len(), 1);
    assert_eq!(d.terminate(), 0);
}

/// Set when the server of the next test stops answering.
static HUNG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Issue 15: a server that took requests and never answered left the status showing the
/// previous error for the client's whole timeout (120 s). The status says the server is silent
/// once it has been for 20 s.
#[test]
fn a_hung_server_is_named_in_the_status_before_the_request_times_out() {
    let lab = Lab::new();
    lab.pki(&["room-e2e"]);
    let ingest = lab.ingest_config(64 << 20);
    tls_server(&lab, &ingest.addr, |tls, _| {
        if HUNG.load(std::sync::atomic::Ordering::SeqCst) {
            // Holds the connection, says nothing.
            sleep(Duration::from_secs(600));
            return;
        }
        answer_json(tls, "500 Internal Server Error", r#"{"error":"busy"}"#);
    });
    lab.config(CAPTURE, 2, &lab.upload_section(&ingest, "room-e2e"));
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(60));
    assert!(d.ctl(Request::Start {}).ok);
    sleep(Duration::from_secs(1));
    assert!(d.ctl(Request::Stop {}).ok);
    d.wait_for(
        "the server's 500 in the status",
        Duration::from_secs(60),
        |s| {
            s.upload
                .as_ref()
                .and_then(|u| u.last_error.as_deref())
                .is_some_and(|e| e.contains("HTTP 500"))
        },
    );
    HUNG.store(true, std::sync::atomic::Ordering::SeqCst);
    // Only the silence note says this, 20 s into the request; without it the status kept
    // the 500 until the request timed out (120 s) and then said "timed out".
    let s = d.wait_for(
        "the status to say the server is silent",
        Duration::from_secs(90),
        |s| {
            s.upload
                .as_ref()
                .and_then(|u| u.last_error.as_deref())
                .is_some_and(|e| e.contains("no answer from the server"))
        },
    );
    let error = s.upload.unwrap().last_error.unwrap();
    assert!(error.contains("GET ") || error.contains("PUT "), "{error}");
    assert_eq!(lab.recordings().len(), 1, "the recording stays on the box");
    assert_eq!(d.terminate(), 0);
}

/// Issue 14: the box takes several server URLs (replicas) and moves to the next when one
/// fails. Here the two servers do not share a store, so the second gets the recording whole:
/// it is killed on the first mid-recording, and completes, verifies and plays on the second.
#[test]
fn a_server_killed_mid_recording_is_failed_over_to_the_next_and_the_recording_completes() {
    let lab = Lab::new();
    lab.pki(&["room-e2e"]);
    let mut first = lab.ingest_config(64 << 20);
    // A second server of its own: another port and store, the same certificate and CA.
    let port = neoflix_e2e::free_port();
    let second_addr = format!("127.0.0.1:{port}");
    let config = fs::read_to_string(lab.path("ingest.toml"))
        .unwrap()
        .replace(&first.addr, &second_addr)
        .replace(
            &lab.path("server").display().to_string(),
            &lab.path("server-b").display().to_string(),
        );
    fs::write(lab.path("ingest-b.toml"), config).unwrap();
    let mut second = neoflix_e2e::Ingest::from_config(
        lab.path("ingest-b.toml"),
        second_addr.clone(),
        lab.path("ingest-b.log"),
    );
    first.start();
    second.start();
    let upload = upload_to_servers(&lab, &first, &[&first.addr, &second_addr]);
    lab.config(CAPTURE, 2, &upload);
    let mut d = lab.start();
    let s = d.wait_ready(Duration::from_secs(60));
    assert_eq!(
        s.upload.unwrap().server.as_deref(),
        Some(format!("https://{}", first.addr).as_str())
    );
    let id = d.ctl(Request::Start {}).recording.unwrap();
    let on_first = lab.path("server/room-e2e").join(&id);
    wait_until(
        "fragments on the first server",
        Duration::from_secs(30),
        || {
            fs::read_dir(&on_first)
                .map(|l| {
                    l.flatten()
                        .any(|e| e.file_name().to_string_lossy().starts_with("frag-"))
                })
                .unwrap_or(false)
        },
        &|| d.log_text() + &first.log_text(),
    );
    first.kill9();
    sleep(Duration::from_secs(3));
    assert!(d.ctl(Request::Stop {}).ok);
    let on_second = lab.path("server-b/room-e2e").join(&id);
    wait_until(
        "the recording to be complete on the second server",
        Duration::from_secs(60),
        || complete(&on_second),
        &|| d.log_text() + &second.log_text(),
    );
    wait_until(
        "the box to delete its copy",
        Duration::from_secs(30),
        || lab.recordings().is_empty(),
        &|| d.log_text(),
    );
    assert!(!complete(&on_first), "the first server died before the end");
    let m = assert_server_copy_plays(&lab, &on_second);
    assert!(m.duration_secs >= 4.0, "{}", m.duration_secs);
    let q = d.status().upload.unwrap();
    assert_eq!(
        (q.delivered, q.server.as_deref()),
        (1, Some(format!("https://{second_addr}").as_str()))
    );
    assert!(
        d.log_text()
            .contains("upload: trying the next ingest server"),
        "{}",
        d.log_text()
    );
    assert_eq!(d.terminate(), 0);
}

/// Issue 14: with a second server to try, a first one that takes the requests and never
/// answers is left after 20 s of silence, not after the client's 120-s timeout.
#[test]
fn a_hung_first_server_is_left_for_the_next_after_its_silence() {
    let lab = Lab::new();
    lab.pki(&["room-e2e"]);
    let mut ingest = lab.ingest_config(64 << 20);
    ingest.start();
    let hung = format!("127.0.0.1:{}", neoflix_e2e::free_port());
    tls_server(&lab, &hung, |_, _| sleep(Duration::from_secs(600)));
    let upload = upload_to_servers(&lab, &ingest, &[&hung, &ingest.addr]);
    lab.config(CAPTURE, 2, &upload);
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(60));
    let id = d.ctl(Request::Start {}).recording.unwrap();
    sleep(Duration::from_secs(1));
    assert!(d.ctl(Request::Stop {}).ok);
    let on_server = lab.path("server/room-e2e").join(&id);
    wait_until(
        "the recording complete on the second server",
        Duration::from_secs(70),
        || complete(&on_server),
        &|| d.log_text(),
    );
    // Left for its silence: waiting out the 120-s timeout says "timed out" instead.
    assert!(
        d.log_text()
            .contains("no answer from the server after 20 s; trying the next server"),
        "{}",
        d.log_text()
    );
    wait_until(
        "the box to delete its copy",
        Duration::from_secs(30),
        || lab.recordings().is_empty(),
        &|| d.log_text(),
    );
    assert_eq!(d.terminate(), 0);
}

/// Found by review: any failed pass moved the box to the next server, a broken recording of
/// its own included, so one bad file had it change servers at every pass. Only a server found
/// down moves it.
#[test]
fn a_broken_recording_on_the_box_does_not_move_it_to_another_server() {
    let lab = Lab::new();
    lab.pki(&["room-e2e"]);
    let mut ingest = lab.ingest_config(64 << 20);
    ingest.start();
    let other = format!("127.0.0.1:{}", neoflix_e2e::free_port());
    let upload = upload_to_servers(&lab, &ingest, &[&ingest.addr, &other]);
    lab.config(CAPTURE, 2, &upload);
    // A recording whose manifest is not one: every pass fails on it.
    let broken = lab.path("recordings/room-e2e-20261129T000000Z-0badf00d");
    fs::create_dir_all(&broken).unwrap();
    fs::write(broken.join("manifest.json"), b"not a manifest").unwrap();
    let mut d = lab.start();
    // Not ready, the failing upload the only reason.
    d.wait_for("the pre-roll full", Duration::from_secs(60), |s| {
        s.reasons.iter().all(|r| r.starts_with("upload failing"))
    });
    let id = d.ctl(Request::Start {}).recording.unwrap();
    sleep(Duration::from_secs(1));
    assert!(d.ctl(Request::Stop {}).ok);
    let on_server = lab.path("server/room-e2e").join(&id);
    wait_until(
        "the good recording complete on the first server",
        Duration::from_secs(60),
        || complete(&on_server),
        &|| d.log_text(),
    );
    let s = d.wait_for("the broken one named", Duration::from_secs(30), |s| {
        s.upload
            .as_ref()
            .and_then(|u| u.last_error.as_deref())
            .is_some_and(|e| e.contains("manifest.json"))
    });
    assert_eq!(
        s.upload.unwrap().server.as_deref(),
        Some(format!("https://{}", ingest.addr).as_str())
    );
    let log = d.log_text();
    assert!(!log.contains("trying the next ingest server"), "{log}");
    assert!(broken.exists(), "the box's broken recording is kept");
    assert_eq!(d.terminate(), 0);
}

/// Found by review: a `503` (busy) or `500` counted as a server down and moved the box to the
/// next one, though a working server had answered. It stays, retrying with back-off.
#[test]
fn a_busy_server_is_not_left_for_the_next() {
    let lab = Lab::new();
    lab.pki(&["room-e2e"]);
    let ingest = lab.ingest_config(64 << 20);
    tls_server(&lab, &ingest.addr, |tls, _| {
        answer_json(
            tls,
            "503 Service Unavailable\r\nretry-after: 1",
            r#"{"error":"server busy: retry later"}"#,
        );
    });
    let other = format!("127.0.0.1:{}", neoflix_e2e::free_port());
    let upload = upload_to_servers(&lab, &ingest, &[&ingest.addr, &other]);
    lab.config(CAPTURE, 2, &upload);
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(60));
    assert!(d.ctl(Request::Start {}).ok);
    sleep(Duration::from_secs(1));
    assert!(d.ctl(Request::Stop {}).ok);
    wait_until(
        "two passes refused as busy",
        Duration::from_secs(60),
        || {
            d.log_text()
                .lines()
                .filter(|l| l.contains("HTTP 503") && l.contains("retrying"))
                .count()
                >= 2
        },
        &|| d.log_text(),
    );
    let log = d.log_text();
    assert!(!log.contains("trying the next ingest server"), "{log}");
    assert_eq!(
        d.status().upload.unwrap().server.as_deref(),
        Some(format!("https://{}", ingest.addr).as_str())
    );
    assert_eq!(lab.recordings().len(), 1, "the recording stays on the box");
    assert_eq!(d.terminate(), 0);
}
