//! The department server's database on both backends: the same calls give the same answers on
//! SQLite and on a real PostgreSQL server (Debian's, started here on loopback), and on
//! PostgreSQL several replicas writing at once keep one audit chain and exact sign-in limits.

use std::path::Path;
use std::sync::Arc;

use neoflix_e2e::{Lab, Postgres};
use neoflix_format::review_api::{Answer, Question, Recorded};
use neoflix_format::reviewer::{
    Kdf, ReviewerFile, ReviewerName, Role, SALT_LEN, WRAPPED_LEN, verifier_of,
};
use neoflix_ingest::audit::{Action, AuditFilter, Event};
use neoflix_ingest::config::{PgUrl, Postgres as PgConfig};
use neoflix_ingest::db::{Added, Attempt, Db, DbError, Filter, PgTarget};

fn pg_config(pg: &Postgres, url: &str, ca: Option<&Path>) -> PgConfig {
    PgConfig {
        url: PgUrl::parse(url).unwrap(),
        password_file: Some(pg.password_file()),
        ca: ca.map(Path::to_path_buf),
    }
}

fn connect(pg: &Postgres) -> Result<Db, DbError> {
    Db::connect(&PgTarget::of(&pg_config(pg, &pg.url(), None))?)
}

/// A reviewer whose auth key is `[auth; 32]`.
fn reviewer(name: &str, auth: u8, roles: &[Role]) -> ReviewerFile {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    ReviewerFile {
        format: neoflix_format::reviewer::FORMAT.into(),
        name: ReviewerName::parse(name).unwrap(),
        department_key_id: "0123456789abcdef".into(),
        created_utc: "2026-11-28T10:15:02.120Z".into(),
        roles: roles.to_vec(),
        kdf: Kdf::recommended(&[7; SALT_LEN]),
        verifier: hex::encode(verifier_of(&[auth; 32])),
        wrapped_key: roles
            .iter()
            .any(|r| matches!(r, Role::Reviewer | Role::Chair))
            .then(|| b64.encode([9u8; WRAPPED_LEN])),
    }
}

fn event(actor: &str, recording: &str) -> Event {
    Event {
        actor: actor.into(),
        action: Action::RecordingOpened,
        recording: recording.into(),
        client: "127.0.0.1".into(),
        detail: serde_json::json!({ "n": 1 }),
    }
}

/// Every call of the API the server makes, with what it answered, leaving out what the clock
/// writes (import times, arrival times, audit times and hashes).
fn transcript(db: &Db) -> Vec<String> {
    let mut t = Vec::new();
    let mut say = |what: &str, v: String| t.push(format!("{what}: {v}"));
    let alice = reviewer("alice", 1, &[Role::Reviewer]);
    say(
        "add alice",
        format!("{:?}", db.add_reviewer(&alice, false).unwrap()),
    );
    say(
        "add alice again",
        db.add_reviewer(&alice, false).unwrap_err().to_string(),
    );
    let chair = reviewer("alice", 1, &[Role::Reviewer, Role::Chair]);
    assert_eq!(
        db.add_reviewer(&chair, true).unwrap(),
        Added::Replaced(vec![Role::Reviewer])
    );
    db.add_reviewer(&reviewer("bob", 2, &[Role::PrivacyOfficer]), false)
        .unwrap();
    say(
        "reviewers",
        format!(
            "{:?}",
            db.reviewers()
                .unwrap()
                .iter()
                .map(|r| (r.file.name.to_string(), r.file.roles.clone()))
                .collect::<Vec<_>>()
        ),
    );
    // Sign-in: wrong until refused, and the right key counted nowhere.
    let mut attempts = Vec::new();
    for i in 0..8 {
        attempts.push(
            match db.sign_in("alice", "10.0.0.1", &[9; 32], 1000 + i).unwrap() {
                Attempt::Refused { limit, .. } => format!("refused by {}", limit.as_str()),
                Attempt::Wrong => "wrong".into(),
                Attempt::Right(r) => format!("right {}", r.file.name),
            },
        );
    }
    assert!(
        attempts.iter().any(|a| a.starts_with("refused")),
        "{attempts:?}"
    );
    say("wrong sign-ins", format!("{attempts:?}"));
    say(
        "alice's failures",
        format!("{:?}", db.name_failures("alice").unwrap()),
    );
    say(
        "address failures",
        format!("{:?}", db.address_failures("10.0.0.1", 0).unwrap()),
    );
    let right = db.sign_in("bob", "10.0.0.2", &[2; 32], 2000).unwrap();
    say(
        "bob signs in",
        format!("{:?}", matches!(right, Attempt::Right(_))),
    );
    // Sessions.
    db.add_session("tok", "csrf", "bob", 3000).unwrap();
    say(
        "session",
        format!("{:?}", db.session("tok", 3100, 1800, 28800).unwrap()),
    );
    say(
        "session idle",
        format!("{:?}", db.session("tok", 9000, 1800, 28800).unwrap()),
    );
    // The index, with consent, holds and the teaching library.
    for (device, id) in [("room-2", "r-b"), ("room-1", "r-a"), ("room-1", "r-c")] {
        // Arrival times (milliseconds) that differ: the lists sort by them, newest first.
        let before = neoflix_ingest::db::now_utc();
        while neoflix_ingest::db::now_utc() == before {
            std::hint::spin_loop();
        }
        say(
            &format!("index {device}/{id}"),
            format!("{:?}", db.index_uploading(device, id).unwrap()),
        );
    }
    say(
        "index again",
        format!("{:?}", db.index_uploading("room-1", "r-a").unwrap()),
    );
    let refused = Recorded {
        answer: Answer::Refused,
        by: Some("alice".into()),
        utc: Some("2026-11-28T11:00:00.000Z".into()),
        note: "parents' wish, ütf-8 kept".into(),
        form_ref: "F-1".into(),
    };
    db.set_consent("room-1", "r-a", Question::Filmed, &refused)
        .unwrap();
    say(
        "consent",
        format!("{:?}", db.consent_of("room-1", "r-a").unwrap()),
    );
    say(
        "hold",
        format!("{:?}", db.hold("room-2", "r-b", "inquiry 7").unwrap()),
    );
    say(
        "hold again",
        format!("{:?}", db.hold("room-2", "r-b", "inquiry 8").unwrap()),
    );
    say(
        "hold of",
        format!("{:?}", db.hold_of("room-2", "r-b").unwrap()),
    );
    db.atomically(|c, events| {
        neoflix_ingest::db::set_teaching_in(
            c,
            "room-1",
            "r-c",
            "2030-01-01T00:00:00.000Z",
            "alice",
        )?;
        events.push(event("alice", "room-1/r-c"));
        Ok::<_, DbError>(())
    })
    .unwrap();
    say(
        "teaching",
        format!("{:?}", db.teaching_of("room-1", "r-c").unwrap()),
    );
    say(
        "retained",
        format!(
            "{:?}",
            db.retained()
                .unwrap()
                .iter()
                .map(|r| (
                    &r.device,
                    &r.id,
                    r.upload,
                    &r.hold,
                    &r.teaching_until_utc,
                    r.refused
                ))
                .collect::<Vec<_>>()
        ),
    );
    let listed = |f: Filter| {
        db.recordings(&f)
            .unwrap()
            .iter()
            .map(|s| {
                format!(
                    "{}/{} held={} filmed={:?}",
                    s.device, s.id, s.lifecycle.held, s.consent.filmed.answer
                )
            })
            .collect::<Vec<_>>()
    };
    let all = listed(Filter::default());
    assert_eq!(all.len(), 3, "{all:?}");
    say("list", format!("{all:?}"));
    say(
        "list room-1",
        format!(
            "{:?}",
            listed(Filter {
                device: Some("room-1".into()),
                ..Filter::default()
            })
        ),
    );
    say(
        "with id",
        format!("{}", db.recordings_with_id("r-b").unwrap().len()),
    );
    say(
        "opened before",
        format!("{:?}", db.opened("tok", "room-1", "r-a")),
    );
    db.add_session("tok2", "csrf", "alice", 9000).unwrap();
    db.mark_opened("tok2", "room-1", "r-a").unwrap();
    db.mark_opened("tok2", "room-1", "r-a").unwrap();
    say(
        "opened",
        format!("{:?}", db.opened("tok2", "room-1", "r-a")),
    );
    say(
        "forget",
        format!("{:?}", db.forget_recording("room-1", "r-a").unwrap()),
    );
    say(
        "opened after",
        format!("{:?}", db.opened("tok2", "room-1", "r-a")),
    );
    say(
        "consent after",
        format!(
            "{:?}",
            db.consent_of("room-1", "r-a").unwrap().filmed.answer
        ),
    );
    // The audit log, filtered and verified.
    for i in 0..5 {
        db.append_audit(&event(
            if i % 2 == 0 { "alice" } else { "bob" },
            "room-2/r-b",
        ))
        .unwrap();
    }
    let entries = db.audit().unwrap();
    say(
        "audit",
        format!(
            "{:?}",
            entries
                .iter()
                .map(|e| (e.seq, &e.actor, e.action.as_str()))
                .collect::<Vec<_>>()
        ),
    );
    say(
        "audit by bob",
        format!(
            "{:?}",
            db.audit_matching(
                &AuditFilter {
                    actor: Some("bob".into()),
                    ..AuditFilter::default()
                },
                10
            )
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>()
        ),
    );
    say(
        "audit verifies",
        format!("{:?}", db.verify_audit().unwrap().is_ok()),
    );
    // Leases.
    say(
        "lease a",
        format!("{:?}", db.take_lease("retention", "a", 100, 60).unwrap()),
    );
    say(
        "lease b",
        format!("{:?}", db.take_lease("retention", "b", 150, 60).unwrap()),
    );
    say(
        "lease a renews",
        format!("{:?}", db.take_lease("retention", "a", 150, 60).unwrap()),
    );
    say(
        "lease b later",
        format!("{:?}", db.take_lease("retention", "b", 211, 60).unwrap()),
    );
    say(
        "lease a after",
        format!("{:?}", db.take_lease("retention", "a", 212, 60).unwrap()),
    );
    // Given back at a clean stop: only by its holder, and then another takes it at once.
    db.release_lease("retention", "a").unwrap();
    say(
        "lease a kept",
        format!("{:?}", db.take_lease("retention", "a", 213, 60).unwrap()),
    );
    db.release_lease("retention", "a").unwrap();
    say(
        "lease b at once",
        format!("{:?}", db.take_lease("retention", "b", 214, 60).unwrap()),
    );
    // Removing a reviewer ends its sessions.
    say(
        "remove alice",
        format!("{:?}", db.remove_reviewer("alice").unwrap()),
    );
    say(
        "alice's session",
        format!("{:?}", db.session("tok2", 9001, 1800, 28800).unwrap()),
    );
    say(
        "expired",
        format!("{:?}", db.expire_sessions(100_000, 1800, 28800).unwrap()),
    );
    t
}

#[test]
fn the_same_calls_give_the_same_answers_on_sqlite_and_postgresql() {
    let lab = Lab::new();
    let sqlite = Db::open(&lab.path("n.db")).unwrap();
    let pg = Postgres::start();
    let postgres = connect(&pg).unwrap();
    let on_sqlite = transcript(&sqlite);
    let on_postgres = transcript(&postgres);
    for (a, b) in on_sqlite.iter().zip(&on_postgres) {
        assert_eq!(a, b, "SQLite and PostgreSQL differ");
    }
    assert_eq!(on_sqlite.len(), on_postgres.len());
    // About fifty calls one after the other: one connection served them all (a pool that
    // went round its slots opened four).
    assert_eq!(
        pg.psql(
            "neoflix",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'neoflix-ingest'"
        ),
        "1"
    );
    // Every replica derives the same sign-in parameters for unknown names.
    let other = connect(&pg).unwrap();
    assert_eq!(
        postgres.server_secret().unwrap(),
        other.server_secret().unwrap()
    );
    assert!(
        postgres
            .place()
            .starts_with("postgres://neoflix@127.0.0.1:")
    );
}

#[test]
fn replicas_writing_at_once_keep_one_audit_chain_and_exact_sign_in_limits() {
    let pg = Postgres::start();
    let replicas: Vec<Arc<Db>> = (0..2).map(|_| Arc::new(connect(&pg).unwrap())).collect();
    replicas[0]
        .add_reviewer(&reviewer("alice", 1, &[Role::Reviewer]), false)
        .unwrap();
    let mut threads = Vec::new();
    for (r, db) in replicas.iter().enumerate() {
        for t in 0..2 {
            let db = db.clone();
            threads.push(std::thread::spawn(move || {
                let mut wrong = 0;
                for i in 0..25 {
                    db.append_audit(&event(&format!("replica-{r}-{t}"), &format!("room/{i}")))
                        .unwrap();
                    // From many addresses, so that only the name's limit can refuse.
                    let address = format!("10.{r}.{t}.{i}");
                    if let Attempt::Wrong = db.sign_in("alice", &address, &[0; 32], 5000).unwrap() {
                        wrong += 1;
                    }
                }
                wrong
            }));
        }
    }
    let wrong: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let db = &replicas[1];
    let entries = db.audit().unwrap();
    assert_eq!(entries.len(), 100);
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=100).collect::<Vec<_>>(),
        "one sequence, no gaps or repeats"
    );
    assert!(db.verify_audit().unwrap().is_ok(), "the chain verifies");
    // Each attempt counted exactly once, and none checked past the limit.
    let (failures, _) = db.name_failures("alice").unwrap();
    assert_eq!(
        failures, wrong,
        "every wrong attempt counted, and only those"
    );
    let limit = (0..100)
        .take_while(|&n| neoflix_ingest::ratelimit::name_retry_after(n, 5000, 5000).is_none())
        .count() as u32;
    assert_eq!(wrong, limit, "checked until the name's limit, not beyond");
}

#[test]
fn replicas_starting_together_migrate_once_and_a_newer_schema_is_refused() {
    let pg = Postgres::start();
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let target = PgTarget::of(&pg_config(&pg, &pg.url(), None)).unwrap();
            std::thread::spawn(move || Db::connect(&target).map(|_| ()))
        })
        .collect();
    for s in starts {
        s.join().unwrap().unwrap();
    }
    assert_eq!(
        pg.psql("neoflix", "SELECT version FROM neoflix_schema"),
        "1"
    );
    pg.psql("neoflix", "UPDATE neoflix_schema SET version = 99");
    let e = connect(&pg).err().unwrap().to_string();
    assert!(
        e.contains("schema version 99 is newer than this program's (1): upgrade neoflix-ingest"),
        "{e}"
    );
}

#[test]
fn the_audit_table_refuses_update_delete_and_truncate_on_postgresql() {
    let pg = Postgres::start();
    let db = connect(&pg).unwrap();
    db.append_audit(&event("alice", "room-1/r")).unwrap();
    for sql in [
        "UPDATE audit SET actor = 'mallory'",
        "DELETE FROM audit",
        "TRUNCATE audit",
    ] {
        let e = pg.try_psql("neoflix", sql).unwrap_err();
        assert!(e.contains("the audit log is append-only"), "{sql}: {e}");
    }
    assert_eq!(db.audit().unwrap().len(), 1);
}

#[test]
fn a_restarted_postgresql_is_connected_to_again_and_a_wrong_password_is_named() {
    let mut pg = Postgres::start();
    let db = connect(&pg).unwrap();
    db.add_reviewer(&reviewer("alice", 1, &[Role::Reviewer]), false)
        .unwrap();
    pg.kill();
    let e = db.reviewers().unwrap_err().to_string();
    assert!(e.starts_with("PostgreSQL: "), "{e}");
    // The next caller tries to connect again; after that failure the ones that follow are
    // answered at once, not each after an attempt of its own.
    let e = db.reviewers().unwrap_err().to_string();
    assert!(e.contains("error connecting to server"), "{e}");
    let e = db.reviewers().unwrap_err().to_string();
    assert!(
        e.contains("cannot be reached (error connecting to server")
            && e.contains("tried again within 5 s"),
        "{e}"
    );
    pg.start_again();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let found = loop {
        match db.reviewers() {
            Ok(r) => break r,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "not connected again: {e}"
            ),
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(found.len(), 1, "connected again");

    let lab = Lab::new();
    let wrong = lab.path("wrong-password");
    std::fs::write(&wrong, "not-it\n").unwrap();
    let cfg = PgConfig {
        password_file: Some(wrong),
        ..pg_config(&pg, &pg.url(), None)
    };
    let e = Db::connect(&PgTarget::of(&cfg).unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("password authentication failed"), "{e}");
}

#[test]
fn tls_to_postgresql_checks_the_servers_certificate() {
    let lab = Lab::new();
    let ca = lab.pki(&[]);
    let mut pg = Postgres::start();
    pg.use_tls(&ca.join("127.0.0.1.crt"), &ca.join("127.0.0.1.key"));
    let tls = pg_config(&pg, &pg.url(), Some(&ca.join("ca.crt")));
    let db = Db::connect(&PgTarget::of(&tls).unwrap()).unwrap();
    db.add_reviewer(&reviewer("alice", 1, &[Role::Reviewer]), false)
        .unwrap();
    let seen = pg.psql(
        "neoflix",
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE s.ssl AND a.application_name = 'neoflix-ingest'",
    );
    assert_eq!(seen, "1", "the connection is TLS");

    // A certificate for another name is refused: the url's host is what is checked.
    let cfg = pg_config(
        &pg,
        &format!("postgres://neoflix@localhost:{}/neoflix", pg.port),
        Some(&ca.join("ca.crt")),
    );
    let e = Db::connect(&PgTarget::of(&cfg).unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not valid for name"), "{e}");

    // Another CA's certificate is refused.
    let other = Lab::new();
    let other_ca = other.pki(&[]);
    let cfg = pg_config(&pg, &pg.url(), Some(&other_ca.join("ca.crt")));
    let e = Db::connect(&PgTarget::of(&cfg).unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("invalid peer certificate"), "{e}");

    // A CA file that holds no certificate is named.
    std::fs::write(lab.path("empty.pem"), "").unwrap();
    let cfg = pg_config(&pg, &pg.url(), Some(&lab.path("empty.pem")));
    let e = PgTarget::of(&cfg).err().unwrap().to_string();
    assert!(e.contains("empty.pem: no PEM certificate in it"), "{e}");
}

#[test]
fn a_units_sqlite_database_moves_into_postgresql_whole_and_only_into_an_empty_one() {
    let lab = Lab::new();
    lab.pki(&[]);
    let file = lab.path("unit.db");
    let unit = Db::open(&file).unwrap();
    transcript(&unit);
    let secret = unit.server_secret().unwrap();
    let head = unit.verify_audit().unwrap().unwrap();
    let entries = unit.audit().unwrap().len();
    assert!(entries > 3, "{entries}");
    let pg = Postgres::start();
    lab.ingest_config_with(64 << 20, &pg.database_section());

    let (code, out, err) = lab.ingest_admin(&["database", "copy-from", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("audit chain verified on the copy, head {head}")),
        "{out}"
    );
    assert!(out.contains(&format!("  audit: {entries}\n")), "{out}");
    assert!(out.contains("  secrets: 1\n"), "{out}");
    let copy = connect(&pg).unwrap();
    let audit = |db: &Db| {
        db.audit()
            .unwrap()
            .into_iter()
            .map(|e| (e.seq, e.utc, e.actor, e.action, e.hash))
            .collect::<Vec<_>>()
    };
    assert_eq!(audit(&copy), audit(&unit));
    let reviewers = |db: &Db| {
        db.reviewers()
            .unwrap()
            .into_iter()
            .map(|r| (r.file, r.imported_utc))
            .collect::<Vec<_>>()
    };
    assert_eq!(reviewers(&copy), reviewers(&unit));
    assert_eq!(copy.retained().unwrap(), unit.retained().unwrap());
    assert_eq!(
        copy.recordings(&Filter::default()).unwrap(),
        unit.recordings(&Filter::default()).unwrap()
    );
    assert_eq!(copy.server_secret().unwrap(), secret);
    assert_eq!(
        copy.hold_of("room-2", "r-b").unwrap().as_deref(),
        Some("inquiry 8")
    );

    // Once there is data, nothing more is copied in.
    let (code, _, err) = lab.ingest_admin(&["database", "copy-from", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already holds reviewers"), "{err}");
    let (code, _, err) = lab.ingest_admin(&["database", "copy-from", "/nonexistent/unit.db"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no such SQLite database file"), "{err}");
    assert_eq!(audit(&copy).len(), entries, "nothing added by the refusals");
}

#[test]
fn both_backends_have_the_same_tables_and_columns() {
    let lab = Lab::new();
    let file = lab.path("n.db");
    drop(Db::open(&file).unwrap());
    let lite = rusqlite::Connection::open(&file).unwrap();
    let mut on_sqlite: Vec<String> = lite
        .prepare(
            "SELECT m.name || '.' || p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p WHERE m.type = 'table'",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    on_sqlite.sort();
    let pg = Postgres::start();
    drop(connect(&pg).unwrap());
    let mut on_postgres: Vec<String> = pg
        .psql(
            "neoflix",
            "SELECT table_name || '.' || column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name <> 'neoflix_schema'",
        )
        .lines()
        .map(str::to_string)
        .collect();
    on_postgres.sort();
    assert!(on_sqlite.len() > 50, "{on_sqlite:?}");
    assert_eq!(on_sqlite, on_postgres);
}

#[test]
fn check_config_connects_to_postgresql_and_names_what_fails() {
    let lab = Lab::new();
    lab.pki(&[]);
    let pg = Postgres::start();
    lab.ingest_config_with(64 << 20, &pg.database_section());
    let check = || {
        let out = neoflix_e2e::command("neoflix-ingest")
            .arg("--check-config")
            .arg("--config")
            .arg(lab.path("ingest.toml"))
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = check();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("[database]: connected to postgres://neoflix@127.0.0.1:"),
        "{out}"
    );
    assert!(out.contains("(PostgreSQL 15"), "{out}");
    // Nothing was changed: the schema is made by the server, not by a check.
    assert_eq!(
        pg.psql(
            "neoflix",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ),
        "0"
    );

    std::fs::write(pg.password_file(), "wrong\n").unwrap();
    let (code, out) = check();
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("[database]: PostgreSQL: password authentication failed"),
        "{out}"
    );
}
