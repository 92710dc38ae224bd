//! The department server under hostile or unlucky clients: a device that hogs connections, bodies
//! that trickle, memory-hungry manifests, racing manifests, revocation while running, and input
//! meant to forge log lines. Real neoflix-ingest, real mutual TLS, curl and raw rustls clients.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use neoflix_e2e::{Lab, RawTls, curl};

/// `Content-Digest` header for `bytes`.
fn digest_header(bytes: &[u8]) -> String {
    let d = <sha2::Sha256 as sha2::Digest>::digest(bytes);
    format!(
        "Content-Digest: sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(d)
    )
}

/// A real sealed fragment of `plain`, written to `<lab>/<name>`.
fn sealed_file(lab: &Lab, name: &str, seq: u64, plain: &[u8]) -> PathBuf {
    let id = neoflix_seal::ObjectId {
        stream: [7; 16],
        seq,
        kind: neoflix_seal::Kind::Fragment,
    };
    let (_key, sealed) = neoflix_seal::seal(&id, plain).unwrap();
    let p = lab.path(name);
    fs::write(&p, sealed).unwrap();
    p
}

fn cert(lab: &Lab, name: &str) -> (PathBuf, PathBuf) {
    let ca = lab.path("ca");
    (
        ca.join(format!("{name}.crt")),
        ca.join(format!("{name}.key")),
    )
}

/// PUTs `file` as object `name` of recording `rec` with curl (20 s cap); returns the status.
fn put_object(
    lab: &Lab,
    ingest: &neoflix_e2e::Ingest,
    who: &(PathBuf, PathBuf),
    rec: &str,
    name: &str,
    file: &Path,
) -> (u16, String) {
    curl(
        lab,
        ingest,
        Some((&who.0, &who.1)),
        &[
            "-m",
            "20",
            "-X",
            "PUT",
            "-H",
            &digest_header(&fs::read(file).unwrap()),
            "--data-binary",
            &format!("@{}", file.display()),
        ],
        &format!("/v1/recordings/{rec}/objects/{name}"),
    )
}

#[test]
fn one_device_trickling_on_every_slot_cannot_lock_out_another() {
    let lab = Lab::new();
    lab.pki(&["room-slow", "room-fast"]);
    let mut ingest = lab.ingest_config_with(
        1 << 20,
        "[limits]\nmax_connections = 4\nmax_connections_per_device = 2\nmin_bytes_per_sec = 1000\nrate_grace_secs = 2\n",
    );
    ingest.start();
    // room-slow takes every slot the server has and sends one byte every 250 ms on each: each
    // byte would reset an idle timer.
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut trickles = Vec::new();
    for i in 0..4 {
        let mut c = RawTls::connect(&lab, &ingest, "room-slow").expect("room-slow connects");
        let ready = ready_tx.clone();
        trickles.push(thread::spawn(move || {
            let head = format!(
                "PUT /v1/recordings/slow/objects/frag-{i:06}.nfx HTTP/1.1\r\nHost: 127.0.0.1\r\n{}\r\nContent-Length: 100000\r\n\r\n",
                digest_header(b"never sent")
            );
            let sent = c.send(head.as_bytes()).is_ok();
            let _ = ready.send(());
            let start = Instant::now();
            let mut cut = !sent;
            while !cut && start.elapsed() < Duration::from_secs(40) {
                cut = c.send(b"x").is_err();
                thread::sleep(Duration::from_millis(250));
            }
            cut
        }));
    }
    for _ in 0..4 {
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("every slow connection sent its headers");
    }
    // Another device uploads meanwhile.
    let fast = cert(&lab, "room-fast");
    let obj = sealed_file(&lab, "fast.nfx", 0, b"a fragment");
    let (code, body) = put_object(&lab, &ingest, &fast, "fast", "frag-000000.nfx", &obj);
    assert_eq!(
        code,
        201,
        "room-fast could not upload while room-slow trickled on every slot: {body}\n{}",
        ingest.log_text()
    );
    // The slow device's surplus connections were refused and the admitted ones cut.
    ingest.wait_log("room-slow refused and cut", |log| {
        let slow: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("device=room-slow"))
            .collect();
        slow.iter()
            .filter(|l| l.contains("too many connections"))
            .count()
            == 2
            && slow.iter().filter(|l| l.contains("status=408")).count() == 2
    });
    for t in trickles {
        assert!(
            t.join().unwrap(),
            "a trickling connection was still open after 40 s\n{}",
            ingest.log_text()
        );
    }
    // Its slots are free again: room-slow itself can upload at a normal pace.
    let slow = cert(&lab, "room-slow");
    assert_eq!(
        put_object(&lab, &ingest, &slow, "slow", "frag-000000.nfx", &obj).0,
        201
    );
}

#[test]
fn many_large_manifests_at_once_stay_within_the_memory_budget() {
    let lab = Lab::new();
    lab.pki(&["room-a"]);
    let mut ingest = lab.ingest_config_with(
        1 << 20,
        "[limits]\nmax_buffered_bytes = 33554432\nmax_connections_per_device = 64\n",
    );
    ingest.start();
    let a = cert(&lab, "room-a");
    // 8 MiB of JSON that is not a manifest: read whole, then refused by the parser.
    let big = lab.path("big-manifest.json");
    let mut text = b"{\"format\":\"".to_vec();
    text.resize(8 << 20, b'x');
    text.extend_from_slice(b"\"}");
    fs::write(&big, &text).unwrap();
    let put = |who: &(PathBuf, PathBuf)| {
        curl(
            &lab,
            &ingest,
            Some((&who.0, &who.1)),
            &[
                "-m",
                "120",
                "-X",
                "PUT",
                "--data-binary",
                &format!("@{}", big.display()),
            ],
            "/v1/recordings/rec-1/manifest",
        )
    };
    let before = ingest.peak_rss_kib();
    let codes: Vec<(u16, String)> = thread::scope(|s| {
        let handles: Vec<_> = (0..24).map(|_| s.spawn(|| put(&a))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let grown = ingest.peak_rss_kib().saturating_sub(before);
    // 24 bodies of 8 MiB held at once would be 192 MiB and more; the budget allows 32 MiB.
    assert!(
        grown < 128 * 1024,
        "the server's peak memory grew by {grown} KiB for 24 manifests of 8 MiB ({codes:?})"
    );
    for (code, body) in &codes {
        assert!(
            *code == 400 || *code == 503,
            "{code} {body}: a manifest is either read and refused or turned away for now"
        );
        if *code == 503 {
            assert!(body.contains("max_buffered_bytes"), "{body}");
        }
    }
    // The budget comes back: once the crowd is gone, a manifest is read (and refused) again.
    let (code, body) = put(&a);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("not a valid manifest"), "{body}");
}

#[test]
fn a_crl_file_without_a_crl_of_the_client_ca_refuses_to_start() {
    let lab = Lab::new();
    let ca = lab.pki(&["room-a"]);
    let ingest = lab.ingest_config(1 << 20);
    let crl = ca.join("ca.crl");
    for (what, bytes, says) in [
        ("an empty file", Vec::new(), "holds no CRL"),
        (
            "the CA certificate",
            fs::read(ca.join("ca.crt")).unwrap(),
            "CERTIFICATE",
        ),
    ] {
        fs::write(&crl, bytes).unwrap();
        let (code, err) = ingest.start_expecting_exit();
        assert_ne!(code, 0, "started with {what} as its CRL: {err}");
        assert!(
            err.contains("tls.crl") && err.contains(crl.to_str().unwrap()) && err.contains(says),
            "{what}: the refusal does not name the file and what is wrong: {err}"
        );
    }
    // A CRL signed by another CA is not a CRL of client_ca.
    let other = lab.path("other-ca");
    assert!(
        neoflix_e2e::neoflix(&["pki", "init", "--dir", other.to_str().unwrap()])
            .status
            .success()
    );
    fs::copy(other.join("ca.crl"), &crl).unwrap();
    let (code, err) = ingest.start_expecting_exit();
    assert_ne!(code, 0, "started with another CA's CRL: {err}");
    assert!(err.contains("client_ca"), "{err}");
}

#[test]
fn a_device_revoked_while_the_server_runs_is_refused_without_a_restart() {
    let lab = Lab::new();
    let ca = lab.pki(&["room-a", "room-b"]);
    let mut ingest = lab.ingest_config(1 << 20);
    ingest.start();
    let (a, b) = (cert(&lab, "room-a"), cert(&lab, "room-b"));
    let get = |who: &(PathBuf, PathBuf)| {
        curl(
            &lab,
            &ingest,
            Some((&who.0, &who.1)),
            &["-m", "10"],
            "/v1/recordings",
        )
        .0
    };
    assert_eq!(get(&a), 200);
    let out = neoflix_e2e::neoflix(&["pki", "revoke", "--dir", ca.to_str().unwrap(), "room-a"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&a) != 0 {
        assert!(
            Instant::now() < deadline,
            "room-a, revoked, still gets in 30 s later\n{}",
            ingest.log_text()
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(get(&b), 200, "room-b is not revoked");
    ingest.wait_log("the reload and the refusal", |log| {
        log.contains("CRL reloaded") && log.to_lowercase().contains("revoked")
    });
}

/// A client certificate for the common name `cn`, signed by the lab's CA as `neoflix pki`
/// would, written to `<lab>/<file>.crt|.key`: names `neoflix pki` itself refuses to issue.
fn odd_certificate(lab: &Lab, cn: &str, file: &str) -> (PathBuf, PathBuf) {
    let ca = lab.path("ca");
    let ca_key = rcgen::KeyPair::from_pem(&fs::read_to_string(ca.join("ca.key")).unwrap()).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&fs::read_to_string(ca.join("ca.crt")).unwrap(), ca_key)
            .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name.push(
        rcgen::DnType::CommonName,
        rcgen::DnValue::Utf8String(cn.into()),
    );
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&key, &issuer).unwrap();
    let (c, k) = (
        lab.path(&format!("{file}.crt")),
        lab.path(&format!("{file}.key")),
    );
    fs::write(&c, cert.pem()).unwrap();
    fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

#[test]
fn a_common_name_with_a_newline_cannot_forge_a_log_line() {
    let lab = Lab::new();
    lab.pki(&["room-a"]);
    let mut ingest = lab.ingest_config(1 << 20);
    ingest.start();
    let (c, k) = odd_certificate(
        &lab,
        "x\nINFO  recording complete, receipt issued device=room-a",
        "forger",
    );
    let (code, _) = curl(
        &lab,
        &ingest,
        Some((&c, &k)),
        &["-m", "10"],
        "/v1/recordings",
    );
    assert_eq!(
        code, 0,
        "a certificate without a usable device id was served"
    );
    let log = ingest.wait_log("the refused certificate", |l| {
        l.contains("no usable device id")
    });
    assert!(
        !log.lines()
            .any(|l| l.starts_with("INFO  recording complete")),
        "a forged line made it into the log:\n{log}"
    );
    assert!(
        log.contains("x\\nINFO"),
        "the name is not shown escaped:\n{log}"
    );
}

#[test]
fn malformed_bodies_are_client_errors_and_unsealed_objects_are_refused() {
    let lab = Lab::new();
    lab.pki(&["room-a"]);
    let mut ingest = lab.ingest_config(1 << 20);
    ingest.start();
    // Bad chunked framing, for an object and for a manifest: the client's fault, 400.
    for (path, digest) in [
        (
            "/v1/recordings/r/objects/frag-000000.nfx",
            digest_header(b"x"),
        ),
        ("/v1/recordings/r/manifest", "X-Nothing: 1".to_string()),
    ] {
        let mut c = RawTls::connect(&lab, &ingest, "room-a").unwrap();
        c.send(
            format!(
                "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{digest}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            c.status(Duration::from_secs(20)),
            Some(400),
            "{path}\n{}",
            ingest.log_text()
        );
    }
    // Bytes that are not a sealed object, under a sealed object's name: refused, not stored.
    let a = cert(&lab, "room-a");
    let plain = lab.path("plain.nfx");
    fs::write(
        &plain,
        b"\x00\x00\x00\x18ftypiso6 plaintext video, not sealed",
    )
    .unwrap();
    let (code, why) = put_object(&lab, &ingest, &a, "r", "frag-000000.nfx", &plain);
    assert_eq!(code, 400, "{why}");
    assert!(why.contains("not a sealed object"), "{why}");
    let (code, why) = put_object(&lab, &ingest, &a, "r", "frag-000000.key", &plain);
    assert_eq!(code, 400, "{why}");
    assert!(!lab.path("server/room-a/r/frag-000000.nfx").exists());
    assert!(!lab.path("server/room-a/r/frag-000000.key").exists());
    // A fragment's sealed bytes under an init segment's name: the header says otherwise.
    let frag = sealed_file(&lab, "frag.nfx", 0, b"video");
    assert_eq!(
        put_object(&lab, &ingest, &a, "r", "init-000.nfx", &frag).0,
        400
    );
    assert_eq!(
        put_object(&lab, &ingest, &a, "r", "frag-000000.nfx", &frag).0,
        201
    );
}

#[test]
fn connections_that_never_start_tls_cannot_lock_out_a_device() {
    let lab = Lab::new();
    lab.pki(&["room-a"]);
    let mut ingest = lab.ingest_config_with(
        1 << 20,
        "[limits]\nmax_connections = 4\nmax_connections_per_device = 2\n",
    );
    ingest.start();
    // Hosts without a certificate (a port scanner, a stuck proxy, anyone on the ward network)
    // open connections and never send a byte: eight times as many as the server has slots.
    let flood: Vec<std::net::TcpStream> = (0..32)
        .map(|_| std::net::TcpStream::connect(&ingest.addr).expect("plain TCP connects"))
        .collect();
    let a = cert(&lab, "room-a");
    let obj = sealed_file(&lab, "a.nfx", 0, b"a fragment");
    let (code, body) = put_object(&lab, &ingest, &a, "rec", "frag-000000.nfx", &obj);
    assert_eq!(
        code,
        201,
        "room-a could not upload while hosts without a certificate held connections open: {body}\n{}",
        ingest.log_text()
    );
    // The flood was really there and is cut by the handshake timeout.
    ingest.wait_log("every idle handshake cut", |log| {
        log.matches("TLS handshake timed out").count() == 32
    });
    drop(flood);
}

#[test]
fn a_device_over_its_limit_is_refused_at_once_and_cannot_lock_out_another() {
    let lab = Lab::new();
    lab.pki(&["room-greedy", "room-b"]);
    let mut ingest = lab.ingest_config_with(
        1 << 20,
        "[limits]\nmax_connections = 4\nmax_connections_per_device = 2\n",
    );
    ingest.start();
    // room-greedy holds its two connections, idle.
    let _held: Vec<RawTls> = (0..2)
        .map(|_| RawTls::connect(&lab, &ingest, "room-greedy").expect("room-greedy connects"))
        .collect();
    // Over its limit, a request gets 503 with Retry-After.
    let greedy = cert(&lab, "room-greedy");
    let (code, head_and_body) = curl(
        &lab,
        &ingest,
        Some((&greedy.0, &greedy.1)),
        &["-m", "20", "-D", "-"],
        "/v1/recordings",
    );
    assert_eq!(code, 503, "{head_and_body}");
    assert!(
        head_and_body.to_lowercase().contains("retry-after: 5")
            && head_and_body.contains("max_connections_per_device"),
        "{head_and_body}"
    );
    // Then it opens 16 more at once, completes the handshakes and never sends a request: each
    // is a connection the server must refuse without letting it sit on a slot.
    thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                if let Ok(mut c) = RawTls::connect(&lab, &ingest, "room-greedy") {
                    // Until the server closes it (or 30 s pass).
                    let _ = c.status(Duration::from_secs(30));
                }
            });
        }
        let greedy_refusals = |log: &str| {
            log.lines()
                .filter(|l| l.contains("device=room-greedy") && l.contains("too many connections"))
                .count()
        };
        ingest.wait_log("room-greedy's extra connections refused", |log| {
            greedy_refusals(log) >= 3
        });
        // Another device uploads meanwhile.
        let b = cert(&lab, "room-b");
        let obj = sealed_file(&lab, "b.nfx", 0, b"a fragment");
        let (code, body) = put_object(&lab, &ingest, &b, "rec", "frag-000000.nfx", &obj);
        assert_eq!(
            code,
            201,
            "room-b could not upload while room-greedy kept opening connections over its limit: {body}\n{}",
            ingest.log_text()
        );
        ingest.wait_log("all 17 of room-greedy's extra connections refused", |log| {
            greedy_refusals(log) == 17
        });
    });
}

#[test]
fn a_full_server_answers_503_naming_the_limit_and_serves_again_once_a_slot_frees() {
    let lab = Lab::new();
    lab.pki(&["room-a", "room-b"]);
    let mut ingest = lab.ingest_config_with(
        1 << 20,
        "[limits]\nmax_connections = 2\nmax_connections_per_device = 2\n",
    );
    ingest.start();
    let held: Vec<RawTls> = (0..2)
        .map(|_| RawTls::connect(&lab, &ingest, "room-a").expect("room-a connects"))
        .collect();
    let b = cert(&lab, "room-b");
    let get = || {
        curl(
            &lab,
            &ingest,
            Some((&b.0, &b.1)),
            &["-m", "20", "-D", "-"],
            "/v1/recordings",
        )
    };
    // Not a wait in the accept queue with no word: a clear answer the box backs off on.
    let (code, head_and_body) = get();
    assert_eq!(code, 503, "{head_and_body}\n{}", ingest.log_text());
    assert!(
        head_and_body.to_lowercase().contains("retry-after: 5")
            && head_and_body.contains("limits.max_connections"),
        "{head_and_body}"
    );
    ingest.wait_log("the refusal", |log| {
        log.lines()
            .any(|l| l.contains("device=room-b") && l.contains("every connection slot is taken"))
    });
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = get();
        if code == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "room-b still refused 20 s after room-a closed its connections: {code} {body}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Regression: a body the server refuses part-way (413) made it close the connection with the
/// client's bytes unread, so the kernel answered the client's next segments with a reset, and a
/// client still sending (curl uploading a file) lost the 413 and saw "connection reset" instead
/// — now and then, under load (`upload::the_server_refuses_strangers_and_keeps_devices_apart`).
/// The server now half-closes and drains for a bounded while, so the client keeps sending
/// until it reads the answer.
#[test]
fn a_client_still_sending_a_refused_body_gets_its_413_not_a_reset() {
    let lab = Lab::new();
    lab.pki(&["room-a"]);
    let mut ingest = lab.ingest_config_with(1 << 20, "");
    ingest.start();
    let head = |framing: &str| {
        format!(
            "PUT /v1/recordings/r/objects/frag-000001.nfx HTTP/1.1\r\nHost: 127.0.0.1\r\n{}\r\n{framing}\r\n\r\n",
            digest_header(b"unused")
        )
    };
    for framing in ["Content-Length: 67108864", "Transfer-Encoding: chunked"] {
        let mut c = RawTls::connect(&lab, &ingest, "room-a").expect("connects");
        c.send(head(framing).as_bytes()).unwrap();
        // A sealed header first, so that the size is what is refused, then 16 MiB more than the
        // server takes: far more than the kernel buffers on loopback.
        let piece = vec![0u8; 64 * 1024];
        let mut sent = 0usize;
        let mut first = true;
        while sent < 17 << 20 {
            let mut body = if first {
                let obj = sealed_file(&lab, "h.nfx", 1, b"x");
                fs::read(obj).unwrap()[..neoflix_seal::HEADER_LEN].to_vec()
            } else {
                piece.clone()
            };
            first = false;
            if framing.starts_with("Transfer") {
                let mut chunk = format!("{:x}\r\n", body.len()).into_bytes();
                chunk.append(&mut body);
                chunk.extend_from_slice(b"\r\n");
                body = chunk;
            }
            if let Err(e) = c.send(&body) {
                panic!(
                    "{framing}: sending failed after {sent} bytes ({e}): the server reset the connection instead of letting the client read its answer"
                );
            }
            sent += body.len();
        }
        assert_eq!(c.status(Duration::from_secs(10)), Some(413), "{framing}");
    }
}
