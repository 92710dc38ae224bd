//! A bad config is refused by both programs, with every error named by line and option.

use neoflix_e2e::{Lab, command, neoflix};

#[test]
fn bad_config_is_refused_with_every_error_by_line_and_option() {
    let lab = Lab::new();
    let cfg = lab.path("bad.toml");
    std::fs::write(
        &cfg,
        "device_id = \"room-1\"\n\
         [capture]\n\
         source = \"test\"\n\
         fps = \"30\"\n\
         zoom = 2\n\
         [ring]\n\
         preroll_secs = 60\n\
         [recordings]\n\
         recipient = \"/nonexistent/department.pub\"\n",
    )
    .unwrap();
    let f = cfg.display().to_string();
    let expected = [
        format!("{f}:4: capture.fps: expected a whole number"),
        format!("{f}:5: capture.zoom: unknown option"),
        format!("{f}:9: recordings.recipient: cannot read /nonexistent/department.pub"),
    ];

    let out = neoflix(&["config", "validate", &f]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("3 errors"), "{err}");
    for e in &expected {
        assert!(err.contains(e.as_str()), "missing '{e}' in:\n{err}");
    }

    let out = command("neoflixd")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for e in &expected {
        assert!(
            err.contains(e.as_str()),
            "neoflixd: missing '{e}' in:\n{err}"
        );
    }

    let out = command("neoflixd")
        .arg("--config")
        .arg(lab.path("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read") && err.contains("missing.toml"),
        "{err}"
    );
}

#[test]
fn a_good_config_validates() {
    let lab = Lab::new();
    let cfg = lab.config("source = \"test\"", 10, "");
    let out = neoflix(&["config", "validate", cfg.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
}

#[test]
fn keygen_writes_a_private_secret_key_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::new();
    let mode = std::fs::metadata(lab.key()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let out = neoflix(&["keygen", "--out", lab.path("keys").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    // The public key is no secret key: export refuses it with a message that says so.
    let out = neoflix(&[
        "verify",
        lab.path("keys").to_str().unwrap(),
        "--key",
        lab.path("keys/department.pub").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PUBLIC"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn configs_that_are_not_small_files_are_refused_not_read_forever() {
    let lab = Lab::new();
    // A device that never ends, and a FIFO nobody writes to: refused at once, by every program.
    let fifo = lab.path("fifo.toml");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let huge = lab.path("huge.toml");
    std::fs::write(&huge, format!("# {}\n", "x".repeat(2 << 20))).unwrap();
    for (path, expected) in [
        ("/dev/zero", "not a regular file"),
        (fifo.to_str().unwrap(), "not a regular file"),
        (huge.to_str().unwrap(), "larger than 1 MiB"),
    ] {
        let out = neoflix(&["config", "validate", path]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{path}: {err}");
        assert!(err.contains(expected), "{path}: {err}");
        for program in ["neoflixd", "neoflix-ingest"] {
            let out = command(program).arg("--config").arg(path).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{program} {path}");
            assert!(err.contains(expected), "{program} {path}: {err}");
        }
    }
}

#[test]
fn thousands_of_errors_give_a_screenful_and_long_values_are_cut() {
    let lab = Lab::new();
    let cfg = lab.path("noisy.toml");
    let mut text = format!(
        "device_id = \"{}\"\n[capture]\nsource = \"test\"\n\"\\u001b]0;owned\\u0007{}\" = 1\n",
        "é".repeat(100_000),
        "k".repeat(100_000)
    );
    for i in 0..40_000 {
        text.push_str(&format!("unknown_{i} = 1\n"));
    }
    std::fs::write(&cfg, &text).unwrap();
    let f = cfg.display().to_string();
    let out = neoflix(&["config", "validate", &f]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        &err[..err.len().min(2000)]
    );
    assert!(
        err.contains("40003 errors"),
        "{}",
        &err[..err.len().min(2000)]
    );
    assert!(err.lines().count() <= 30, "{} lines", err.lines().count());
    assert!(err.contains("and 39983 more"), "{err}");
    // An unknown key is outside text too: escaped and cut, never a terminal escape.
    assert!(!err.contains('\u{1b}'), "{err:?}");
    assert!(err.contains("capture.\\u{1b}]0;owned\\u{7}kkk"), "{err}");
    // The first errors by line, with the offending value cut to a readable length.
    assert!(err.contains(&format!("{f}:1: device_id: '")), "{err}");
    assert!(err.len() < 4000, "{} bytes of errors", err.len());
    assert!(
        err.contains(&format!("{f}:5: capture.unknown_0: unknown option")),
        "{err}"
    );
}

#[test]
fn ingest_check_config_reports_every_error_by_line_and_option_and_passes_a_good_config() {
    let lab = Lab::new();
    lab.pki(&[]);
    let ca = lab.path("ca");
    let bad = lab.path("bad-ingest.toml");
    std::fs::write(
        &bad,
        format!(
            "listen = \"ingest.example:8443\"\n\
             [tls]\n\
             cert = \"{c}/127.0.0.1.crt\"\n\
             key = \"{c}/nonexistent.key\"\n\
             client_ca = \"{c}/ca.crt\"\n\
             [storage]\n\
             dir = \"store\"\n\
             max_object_bytes = \"64 MiB\"\n\
             [limits]\n\
             max_connections = 4\n\
             max_connections_per_device = 8\n\
             max_handshake = 10\n",
            c = ca.display()
        ),
    )
    .unwrap();
    let f = bad.display().to_string();
    let expected = [
        format!("{f}:1: listen: 'ingest.example:8443' is not an IP address and port"),
        format!(
            "{f}:4: tls.key: cannot read {}/nonexistent.key",
            ca.display()
        ),
        format!("{f}:8: storage.max_object_bytes: expected a whole number bytes, found a string"),
        format!(
            "{f}:11: limits.max_connections_per_device: 8 is more than limits.max_connections (4)"
        ),
        format!("{f}:12: limits.max_handshake: unknown option"),
    ];
    let check = |config: &std::path::Path| {
        command("neoflix-ingest")
            .arg("--check-config")
            .arg("--config")
            .arg(config)
            .output()
            .unwrap()
    };

    let out = check(&bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.starts_with(&format!("5 errors in {f}:")), "{err}");
    for e in &expected {
        assert!(err.contains(e.as_str()), "missing '{e}' in:\n{err}");
    }
    // The server refuses to start with the same list.
    let out = command("neoflix-ingest")
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for e in &expected {
        assert!(err.contains(e.as_str()), "start: missing '{e}' in:\n{err}");
    }

    // The harness's config is good.
    lab.ingest_config(1 << 20);
    let good = lab.path("ingest.toml");
    let out = check(&good);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}: config OK\n", good.display())
    );

    // Right options, wrong contents: a certificate where the CRL belongs is found by the check
    // too, as the server would find it at start.
    std::fs::copy(ca.join("ca.crt"), ca.join("ca.crl")).unwrap();
    let out = check(&good);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("tls.crl"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("config OK"));
}

/// Issue 15: a ring directory on a filesystem too small for the pre-roll is said so by
/// `config validate` on the box, before the pre-roll quietly comes up short.
#[test]
fn validate_warns_of_a_ring_filesystem_too_small_for_the_preroll() {
    let lab = Lab::new();
    let ring = lab.path("ring");
    std::fs::create_dir_all(&ring).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&ring)
        .status()
        .unwrap();
    assert!(st.success(), "mounting a tmpfs needs root (CI has it)");
    let cfg = lab.config("source = \"test\"\nbitrate_kbps = 4000", 60, "");
    let out = neoflix(&["config", "validate", cfg.to_str().unwrap()]);
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(&ring)
        .status();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("its filesystem holds 1 MiB, and 60 s of pre-roll need about 31 MiB"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("(1 warnings)"));
}
