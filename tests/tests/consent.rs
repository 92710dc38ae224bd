//! Consent, roles, the teaching library, withdrawal by a chair and the privacy officer's audit
//! log, through the review API of the real neoflix-ingest, with real recordings from a real
//! room box (the browser's side of the same is in `review.rs`).

use std::fs;
use std::time::{Duration, Instant, SystemTime};

use neoflix_e2e::{Lab, free_port, wait_until};
use serde_json::{Value, json};

const CAPTURE: &str = "source = \"test\"\nwidth = 320\nheight = 240\nfps = 15\nbitrate_kbps = 300";

fn days_from_now(days: u64) -> String {
    neoflix_format::utc(SystemTime::now() + Duration::from_secs(days * 86_400))
}

/// A signed-in person: the cookie and the CSRF token.
struct Person {
    cookie: String,
    csrf: String,
    answer: Value,
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn sign_in(&self, name: &str, passphrase: &str) -> Person {
        let params: Value = self
            .http
            .post(format!("{}/api/login/params", self.base))
            .header("origin", &self.base)
            .json(&json!({ "user": name }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let kdf: neoflix_format::reviewer::Kdf =
            serde_json::from_value(params["kdf"].clone()).unwrap();
        let (auth, _) = neoflix_open::reviewer::derive(passphrase, &kdf).unwrap();
        use base64::Engine as _;
        let r = self
            .http
            .post(format!("{}/api/login", self.base))
            .header("origin", &self.base)
            .json(&json!({
                "user": name,
                "auth": base64::engine::general_purpose::STANDARD.encode(auth.as_bytes()),
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name} signs in");
        let cookie = r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let answer: Value = r.json().await.unwrap();
        Person {
            cookie,
            csrf: answer["csrf"].as_str().unwrap().to_string(),
            answer,
        }
    }

    async fn get(&self, who: &Person, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .header("cookie", &who.cookie)
            .send()
            .await
            .unwrap()
    }

    async fn post(&self, who: &Person, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .header("cookie", &who.cookie)
            .header("origin", &self.base)
            .header("x-neoflix-csrf", &who.csrf)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn listed(&self, who: &Person) -> Vec<Value> {
        let r = self.get(who, "/api/recordings").await;
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()["recordings"]
            .as_array()
            .unwrap()
            .clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_consent_teaching_and_withdrawal_are_each_checked_applied_and_audited() {
    let lab = Lab::new();
    lab.pki(&["room-e2e"]);
    let assets = lab.path("review-assets");
    fs::create_dir_all(&assets).unwrap();
    fs::write(
        assets.join("index.html"),
        "<!doctype html><title>x</title>\n",
    )
    .unwrap();
    let rport = free_port();
    // The stricter policy: a pending review consent keeps the recording closed.
    let extra = format!(
        "[review]\nlisten = \"127.0.0.1:{rport}\"\nassets = \"{}\"\n[database]\npath = \"{}\"\n[retention]\nkeep_days = 30\n[consent]\nreview_while_pending = false\n",
        assets.display(),
        lab.path("db/neoflix.db").display()
    );
    let mut ingest = lab.ingest_config_with(64 << 20, &extra);
    ingest.start();
    wait_until(
        "the review listener",
        Duration::from_secs(20),
        || std::net::TcpStream::connect(("127.0.0.1", rport)).is_ok(),
        &|| ingest.log_text(),
    );
    let api = Api {
        http: reqwest::Client::builder()
            .tls_backend_preconfigured(neoflix_pki::client_tls(&lab.ca(), None).unwrap())
            .build()
            .unwrap(),
        base: format!("https://127.0.0.1:{rport}"),
    };
    const PASS: &str = "a passphrase long enough";
    for (name, roles) in [
        ("chair", &["chair"][..]),
        ("rita", &["reviewer"][..]),
        ("olga", &["privacy-officer"][..]),
        ("ian", &["it-admin"][..]),
    ] {
        let file = lab.enrol_as(name, PASS, roles);
        let (code, out, err) = lab.ingest_admin(&["reviewer", "import", file.to_str().unwrap()]);
        assert_eq!(code, 0, "{out}{err}");
    }
    let officer_file = fs::read_to_string(lab.path("olga.reviewer")).unwrap();
    assert!(
        !officer_file.contains("wrapped_key"),
        "no video, no key: {officer_file}"
    );

    // Three recordings from a real box.
    lab.config(CAPTURE, 3, &lab.upload_section(&ingest, "room-e2e"));
    let mut d = lab.start();
    let ids: Vec<String> = (0..3)
        .map(|_| lab.record_delivered(&mut d, &ingest, "room-e2e", 2))
        .collect();
    let (kept, refused, plain) = (ids[0].clone(), ids[1].clone(), ids[2].clone());

    let chair = api.sign_in("chair", PASS).await;
    let rita = api.sign_in("rita", PASS).await;
    let olga = api.sign_in("olga", PASS).await;
    let ian = api.sign_in("ian", PASS).await;
    assert_eq!(olga.answer["roles"], json!(["privacy-officer"]));
    assert!(olga.answer["wrapped_key"].is_null(), "{}", olga.answer);
    assert!(chair.answer["wrapped_key"].is_string());
    let deadline = Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let l = api.listed(&chair).await;
        if l.len() == 3 && l.iter().all(|r| r["upload"] == "complete") {
            break l;
        }
        assert!(Instant::now() < deadline, "never all complete: {l:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for r in &rows {
        for q in ["filmed", "review", "use"] {
            assert_eq!(r["consent"][q]["answer"], "pending", "{r}");
        }
        let after = r["lifecycle"]["delete_after_utc"].as_str().unwrap();
        assert!(
            after > days_from_now(29).as_str() && after < days_from_now(31).as_str(),
            "{r}"
        );
    }

    // Roles, checked on every request.
    let open = |id: &str| format!("/api/recordings/{id}");
    assert_eq!(api.get(&olga, &open(&kept)).await.status(), 403, "no video");
    assert_eq!(api.get(&ian, &open(&kept)).await.status(), 403);
    assert_eq!(api.get(&ian, "/api/recordings").await.status(), 403);
    assert_eq!(api.get(&ian, "/api/fleet").await.status(), 200);
    assert_eq!(api.listed(&olga).await.len(), 3, "the retention report");
    assert_eq!(api.get(&rita, "/api/audit").await.status(), 403);
    // Every change and every video request is the chair's or a reviewer's only; refused
    // requests repeated are audited once per session and request.
    for who in [&olga, &ian] {
        for (path, body) in [
            (
                format!("/api/recordings/{kept}/consent"),
                json!({"question": "review", "answer": "granted"}),
            ),
            (
                format!("/api/recordings/{kept}/withdraw"),
                json!({"reason": "x"}),
            ),
            (
                format!("/api/recordings/{kept}/teaching"),
                json!({"days": 30}),
            ),
            (format!("/api/recordings/{kept}/download"), json!({})),
        ] {
            for _ in 0..3 {
                assert_eq!(
                    api.post(who, &path, body.clone()).await.status(),
                    403,
                    "{path}"
                );
            }
        }
        let object = format!("/api/recordings/{kept}/objects/frag-000000.nfx");
        assert_eq!(api.get(who, &object).await.status(), 403);
    }
    let r = api
        .post(
            &rita,
            &format!("/api/recordings/{kept}/consent"),
            json!({"question": "review", "answer": "granted"}),
        )
        .await;
    assert_eq!(r.status(), 403, "a reviewer does not record consent");

    // Pending review consent under the strict policy: closed, until the chair records it.
    assert_eq!(api.get(&rita, &open(&kept)).await.status(), 403);
    for (q, a) in [("filmed", "granted"), ("review", "granted")] {
        let r = api
            .post(
                &chair,
                &format!("/api/recordings/{kept}/consent"),
                json!({"question": q, "answer": a, "note": "mother, in person", "form_ref": "CF-114"}),
            )
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().await.unwrap()["outcome"], "recorded");
    }
    assert_eq!(api.get(&rita, &open(&kept)).await.status(), 200);
    let row = api
        .listed(&rita)
        .await
        .into_iter()
        .find(|r| r["id"] == kept.as_str())
        .unwrap();
    assert_eq!(row["consent"]["review"]["answer"], "granted");
    assert_eq!(row["consent"]["review"]["by"], "chair");
    assert_eq!(
        row["consent"]["review"]["form_ref"], "",
        "notes and forms are for the chair and the privacy officer"
    );
    let row = api
        .listed(&olga)
        .await
        .into_iter()
        .find(|r| r["id"] == kept.as_str())
        .unwrap();
    assert_eq!(row["consent"]["review"]["form_ref"], "CF-114");
    assert_eq!(row["consent"]["review"]["note"], "mother, in person");
    let r = api
        .post(
            &chair,
            &format!("/api/recordings/{kept}/consent"),
            json!({"question": "review", "answer": "granted", "note": "a\nforged line"}),
        )
        .await;
    assert_eq!(r.status(), 400, "one line only");
    let r = api
        .post(
            &chair,
            &format!("/api/recordings/{kept}/consent"),
            json!({"question": "sharing", "answer": "granted"}),
        )
        .await;
    assert_eq!(r.status(), 400, "three questions only");

    // The teaching library: only with use granted, with its own date, which purge respects.
    let teach = format!("/api/recordings/{kept}/teaching");
    let r = api.post(&chair, &teach, json!({"days": 730})).await;
    assert_eq!(r.status(), 409, "use consent still pending");
    let r = api
        .post(
            &chair,
            &format!("/api/recordings/{kept}/consent"),
            json!({"question": "use", "answer": "granted", "form_ref": "CF-114"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        api.post(&chair, &teach, json!({"days": 0})).await.status(),
        400
    );
    let r = api.post(&chair, &teach, json!({"days": 730})).await;
    assert_eq!(r.status(), 200);
    let until = r.json::<Value>().await.unwrap()["teaching_until_utc"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(until > days_from_now(729) && until < days_from_now(731));

    // Refusing review consent: gone from storage and the list at once, the box told.
    let r = api
        .post(
            &chair,
            &format!("/api/recordings/{refused}/consent"),
            json!({"question": "review", "answer": "refused", "note": "father, at the bedside"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["outcome"], "withdrawn");
    assert!(!lab.path("server/room-e2e").join(&refused).exists());
    assert!(
        lab.path("server/room-e2e/.withdrawn")
            .join(format!("{refused}.json"))
            .exists()
    );
    assert_eq!(api.get(&rita, &open(&refused)).await.status(), 404);
    let listed = api.listed(&chair).await;
    assert_eq!(listed.len(), 2, "{listed:?}");

    // A purge a day past keep_days deletes exactly the expired one, not the teaching one.
    let (code, out, err) = lab.ingest_admin(&["purge", "--now", &days_from_now(31)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("deleted room-e2e/{plain}")), "{out}");
    assert!(out.contains("1 recording deleted"), "{out}");
    assert!(!out.contains(kept.as_str()), "{out}");
    assert!(lab.path("server/room-e2e").join(&kept).exists());
    let (code, out, _) = lab.ingest_admin(&["recordings"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("teaching library") && out.contains("ggg"),
        "{out}"
    );
    let (code, out, _) = lab.ingest_admin(&["recordings", "--json"]);
    assert_eq!(code, 0);
    let l: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(l[0]["consent"]["use"]["answer"], "granted");
    assert_eq!(l[0]["retention"]["verdict"], "teaching");

    // Withdrawal by the chair: refused under a hold, done once released.
    let (code, out, err) = lab.ingest_admin(&["hold", &kept, "--reason", "complaint 2026-9"]);
    assert_eq!(code, 0, "{out}{err}");
    let withdraw = format!("/api/recordings/{kept}/withdraw");
    assert_eq!(
        api.post(&chair, &withdraw, json!({"reason": " "}))
            .await
            .status(),
        400,
        "a withdrawal says why"
    );
    let r = api
        .post(&chair, &withdraw, json!({"reason": "parents withdrew"}))
        .await;
    assert_eq!(r.status(), 409);
    assert!(r.text().await.unwrap().contains("legal hold"));
    let (code, out, err) = lab.ingest_admin(&["hold", &kept, "--release"]);
    assert_eq!(code, 0, "{out}{err}");
    let r = api
        .post(&chair, &withdraw, json!({"reason": "parents withdrew"}))
        .await;
    assert_eq!(r.status(), 200);
    assert!(!lab.path("server/room-e2e").join(&kept).exists());
    assert!(api.listed(&chair).await.is_empty());

    // The privacy officer's audit log: filtered, exported, and its chain intact.
    let r = api
        .get(&olga, "/api/audit?action=consent-set&actor=chair")
        .await;
    assert_eq!(r.status(), 200);
    let a: Value = r.json().await.unwrap();
    assert_eq!(a["chain"]["intact"], true, "{a}");
    let entries = a["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 4, "{entries:?}");
    assert!(entries.iter().all(|e| e["action"] == "consent-set"));
    let r = api
        .get(&olga, &format!("/api/audit?recording=room-e2e%2F{refused}"))
        .await;
    let a: Value = r.json().await.unwrap();
    let actions: Vec<&str> = a["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["recording-withdrawn", "consent-set"], "{a}");
    let forbidden = api
        .get(&olga, "/api/audit?action=forbidden&actor=ian")
        .await
        .json::<Value>()
        .await
        .unwrap();
    let asked: Vec<String> = forbidden["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["detail"].as_str().unwrap().to_string())
        .collect();
    // ian's: opening, the list, then one each for consent, withdraw, teaching, download and
    // objects, however often each was asked.
    assert_eq!(asked.len(), 7, "{asked:#?}");
    let r = api.get(&olga, "/api/audit?format=csv").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = r.text().await.unwrap();
    assert!(csv.starts_with("seq,utc,actor,action,"), "{csv}");
    for action in [
        "reviewer-imported",
        "forbidden",
        "consent-set",
        "teaching-added",
        "legal-hold",
        "recording-withdrawn",
        "recording-opened",
        "audit-read",
    ] {
        assert!(csv.contains(&format!(",{action},")), "{action}:\n{csv}");
    }
    assert_eq!(
        api.get(&olga, "/api/audit?action=nonsense").await.status(),
        400
    );

    // A re-imported file with other roles: the change is audited and applies at once.
    fs::rename(lab.path("rita.reviewer"), lab.path("rita-first.reviewer")).unwrap();
    let promoted = lab.enrol_as("rita", PASS, &["reviewer", "privacy-officer"]);
    let (code, out, err) = lab.ingest_admin(&[
        "reviewer",
        "import",
        "--replace",
        promoted.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("roles changed"), "{out}");
    let rita = api.sign_in("rita", PASS).await;
    assert_eq!(api.get(&rita, "/api/audit").await.status(), 200);

    let (code, out, err) = lab.ingest_admin(&["audit", "--verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("roles-changed"), "{out}");
    assert_eq!(d.terminate(), 0);

    // Someone with the database file edits a consent entry by hand (past the trigger that
    // refuses it): the chain names the entry, on the command line and on the officer's page.
    let seq: i64 = {
        let c = rusqlite::Connection::open(lab.path("db/neoflix.db")).unwrap();
        c.execute_batch("DROP TRIGGER audit_no_update").unwrap();
        let seq = c
            .query_row(
                "SELECT MIN(seq) FROM audit WHERE action = 'consent-set'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        c.execute(
            "UPDATE audit SET detail = replace(detail, 'granted', 'refused') WHERE seq = ?1",
            [seq],
        )
        .unwrap();
        seq
    };
    let (code, out, _) = lab.ingest_admin(&["audit", "--verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("BROKEN at entry {seq}")), "{out}");
    let a: Value = api.get(&olga, "/api/audit").await.json().await.unwrap();
    assert_eq!(a["chain"]["intact"], false, "{}", a["chain"]);
    assert_eq!(a["chain"]["broken_at"], seq);
}
