//! The fleet over MQTT, against a real mosquitto on loopback: retained status, last will,
//! re-announcement after a broker restart, commands (good and bad), mutual TLS with an ACL, and
//! `neoflix fleet`.

use std::time::{Duration, Instant};

use neoflix_control::State;
use neoflix_e2e::{Lab, Message, Mosquitto, MqttProbe, neoflix};
use serde_json::Value;

const CAPTURE: &str = "source = \"test\"\nwidth = 320\nheight = 180\nfps = 15\nbitrate_kbps = 300\nx264_preset = \"ultrafast\"";

fn mqtt_section(broker: &Mosquitto) -> String {
    format!(
        "[mqtt]\nurl = \"{}\"\nstatus_interval_secs = 5\nhome_assistant = true\n",
        broker.url(false)
    )
}

fn state_is(state: &'static str) -> impl Fn(&Message) -> bool {
    move |m| m.json["state"] == state
}

fn reply_to<'a>(id: &'a str) -> impl Fn(&Message) -> bool + 'a {
    move |m| m.json["request_id"] == id
}

/// `neoflix fleet --once --json` against `broker` over mutual TLS as `fleet-admin`.
fn fleet_json_as_admin(lab: &Lab, broker: &Mosquitto) -> Value {
    let ca = lab.path("ca");
    let out = neoflix(&[
        "fleet",
        "--broker",
        &broker.url(true),
        "--ca",
        ca.join("ca.crt").to_str().unwrap(),
        "--cert",
        ca.join("fleet-admin.crt").to_str().unwrap(),
        "--key",
        ca.join("fleet-admin.key").to_str().unwrap(),
        "--once",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn status_is_retained_and_commands_drive_the_recorder() {
    let lab = Lab::new();
    let broker = Mosquitto::plain(&lab);
    lab.config(CAPTURE, 3, &format!("\n{}", mqtt_section(&broker)));
    let t = "neoflix/room-e2e";
    // A command left retained on the broker would run again at every reconnection: ignored.
    let early = MqttProbe::plain(&broker, "neoflix/none");
    early.publish(
        &format!("{t}/cmd"),
        br#"{"cmd":"start","request_id":"retained"}"#,
        true,
    );
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(60));

    let status = format!("{t}/status");
    // A subscriber that arrives late still learns the state at once: the status is retained.
    let late = MqttProbe::plain(&broker, &format!("{t}/#"));
    let s = late.wait(
        &status,
        "retained ready status",
        Duration::from_secs(15),
        |m| m.retained && m.json["ready"] == true,
    );
    // (No [upload] here: the upload queue is absent, not empty.)
    for field in [
        "state",
        "reasons",
        "preroll_secs",
        "storage_free_bytes",
        "full_recording_fits",
        "camera_fps",
        "camera_dropped_frames",
        "clock_synced",
        "version",
        "uptime_secs",
    ] {
        assert!(
            s.json.get(field).is_some(),
            "status lacks {field}: {}",
            s.json
        );
    }
    // Home Assistant discovery is retained too.
    let ha = MqttProbe::plain(&broker, "homeassistant/#");
    let button = ha.wait(
        "homeassistant/button/neoflix_room-e2e/start/config",
        "discovery of the start button",
        Duration::from_secs(10),
        |m| m.retained,
    );
    assert_eq!(button.json["command_topic"], format!("{t}/cmd"));

    let p = MqttProbe::plain(&broker, &format!("{t}/#"));
    let cmd = format!("{t}/cmd");
    let reply = format!("{t}/reply");
    let event = format!("{t}/event");

    p.publish(&cmd, br#"{"cmd":"ping","request_id":"p1"}"#, false);
    let r = p.wait(
        &reply,
        "ping reply",
        Duration::from_secs(10),
        reply_to("p1"),
    );
    assert_eq!(r.json["ok"], true);

    // Start: the recording includes the pre-roll.
    p.publish(&cmd, br#"{"cmd":"start","request_id":"r1"}"#, false);
    let r = p.wait(
        &reply,
        "start reply",
        Duration::from_secs(10),
        reply_to("r1"),
    );
    assert_eq!(r.json["ok"], true, "{}", r.json);
    let id = r.json["recording"].as_str().unwrap().to_string();
    let e = p.wait(&event, "recording_started", Duration::from_secs(10), |m| {
        m.json["event"] == "recording_started"
    });
    assert_eq!(e.json["trigger"], "mqtt");
    assert_eq!(e.json["recording"], id.as_str());
    assert!(
        e.json["preroll_secs"].as_f64().unwrap() >= 2.0,
        "{}",
        e.json
    );
    p.wait(&status, "recording status", Duration::from_secs(10), |m| {
        m.json["state"] == "recording" && m.json["recording"] == id.as_str()
    });

    p.publish(
        &cmd,
        br#"{"cmd":"mark","label":"drug given","request_id":"m1"}"#,
        false,
    );
    p.wait(&event, "marker", Duration::from_secs(10), |m| {
        m.json["event"] == "marker" && m.json["labelled"] == true && m.json["by"] == "mqtt"
    });

    // Bad commands: an error reply where there is someone to answer, never a crash or a stall.
    p.publish(&cmd, b"this is not json", false);
    p.publish(&cmd, br#"{"cmd":"explode","request_id":"bad1"}"#, false);
    p.publish(&cmd, br#"{"cmd":"start","request_id":"bad2"}"#, false);
    p.publish(&cmd, br#"{"cmd":"privacy","request_id":"bad3"}"#, false);
    // A long unknown command with a multi-byte character across byte 64: once a panic in the
    // parser that killed the command task, so every later command was answered "busy".
    let multibyte = format!(r#"{{"cmd":"{}é","request_id":"bad4"}}"#, "a".repeat(63));
    p.publish(&cmd, multibyte.as_bytes(), false);
    let big = format!(
        r#"{{"cmd":"mark","request_id":"big","label":"{}"}}"#,
        "x".repeat(20_000)
    );
    p.publish(&cmd, big.as_bytes(), false);
    p.publish(
        &cmd,
        br#"{"cmd":"stop","request_id":"elsewhere","device":"room-9"}"#,
        false,
    );
    let r = p.wait(
        &reply,
        "unknown-command reply",
        Duration::from_secs(10),
        reply_to("bad1"),
    );
    assert!(
        r.json["error"]
            .as_str()
            .unwrap()
            .contains("unknown command"),
        "{}",
        r.json
    );
    let r = p.wait(
        &reply,
        "already-recording reply",
        Duration::from_secs(10),
        reply_to("bad2"),
    );
    assert_eq!(r.json["ok"], false);
    assert!(
        r.json["error"]
            .as_str()
            .unwrap()
            .contains("already recording")
    );
    let r = p.wait(
        &reply,
        "malformed reply",
        Duration::from_secs(10),
        reply_to("bad3"),
    );
    assert!(
        r.json["error"].as_str().unwrap().contains("malformed"),
        "{}",
        r.json
    );
    let r = p.wait(
        &reply,
        "reply to a long multi-byte command",
        Duration::from_secs(10),
        reply_to("bad4"),
    );
    assert!(
        r.json["error"]
            .as_str()
            .unwrap()
            .contains("unknown command"),
        "{}",
        r.json
    );
    p.wait(&reply, "reply to non-JSON", Duration::from_secs(10), |m| {
        m.json["request_id"].is_null() && m.json["ok"] == false
    });
    // Still answering, and the ignored ones got no reply and did nothing.
    p.publish(&cmd, br#"{"cmd":"ping","request_id":"p2"}"#, false);
    p.wait(
        &reply,
        "second ping reply",
        Duration::from_secs(10),
        reply_to("p2"),
    );
    let ignored = p
        .messages()
        .into_iter()
        .filter(|m| {
            m.topic == reply
                && ["big", "elsewhere", "retained"]
                    .contains(&m.json["request_id"].as_str().unwrap_or(""))
        })
        .count();
    assert_eq!(ignored, 0);
    assert_eq!(d.status().recording.as_deref(), Some(id.as_str()));
    assert_eq!(d.status().recordings_finalized, 0);
    let log = d.log_text();
    for expected in [
        "MQTT message ignored: commands over 4 KiB",
        "MQTT message ignored: commands for another device",
        "MQTT message ignored: retained commands",
    ] {
        assert!(log.contains(expected), "{expected}:\n{log}");
    }

    p.publish(&cmd, br#"{"cmd":"stop","request_id":"s1"}"#, false);
    let r = p.wait(
        &reply,
        "stop reply",
        Duration::from_secs(10),
        reply_to("s1"),
    );
    assert_eq!(r.json["ok"], true, "{}", r.json);
    let e = p.wait(&event, "recording_stopped", Duration::from_secs(15), |m| {
        m.json["event"] == "recording_stopped"
    });
    assert_eq!(e.json["reason"], "mqtt");
    let recs = lab.recordings();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(recs[0].join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["trigger"], "mqtt");
    assert!(
        manifest["duration_secs"].as_f64().unwrap() >= 3.0,
        "{manifest}"
    );

    // A clean stop says goodbye in the retained status.
    assert_eq!(d.terminate(), 0);
    p.wait(
        &status,
        "offline after SIGTERM",
        Duration::from_secs(10),
        state_is("offline"),
    );
}

#[test]
fn a_killed_daemon_goes_offline_and_a_restarted_broker_hears_it_again() {
    let lab = Lab::new();
    let mut broker = Mosquitto::plain(&lab);
    lab.config(CAPTURE, 2, &format!("\n{}", mqtt_section(&broker)));
    let t = "neoflix/room-e2e/status";

    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(60));
    let p = MqttProbe::plain(&broker, t);
    p.wait(t, "ready status", Duration::from_secs(15), |m| {
        m.json["ready"] == true
    });
    d.kill9();
    // The broker publishes the last will: retained, so the fleet view shows it to late-comers.
    p.wait(t, "last will", Duration::from_secs(30), state_is("offline"));
    let late = MqttProbe::plain(&broker, t);
    late.wait(t, "retained offline", Duration::from_secs(10), |m| {
        m.retained && m.json["state"] == "offline"
    });

    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(60));
    // The broker goes away (losing every retained message: no persistence) ...
    broker.kill();
    // ... and recording goes on without it.
    let started = d.ctl(neoflix_control::Request::Start {});
    assert!(started.ok, "{:?}", started.error);
    std::thread::sleep(Duration::from_secs(3));
    let stopped = d.ctl(neoflix_control::Request::Stop {});
    assert!(stopped.ok, "{:?}", stopped.error);
    d.wait_for("the recording finalized", Duration::from_secs(20), |s| {
        s.recordings_finalized == 1
    });
    broker.start();
    // The daemon reconnects on its own and re-announces its retained status.
    let after = Instant::now();
    let p = MqttProbe::plain(&broker, t);
    // (Statuses queued during the outage may come first; the current one follows.)
    p.wait(
        t,
        "re-announced current status",
        Duration::from_secs(45),
        |m| m.json["state"] == "ready" && m.json["recordings_finalized"] == 1,
    );
    eprintln!(
        "re-announced {:?} after the broker came back",
        after.elapsed()
    );
    assert_eq!(d.terminate(), 0);
}

#[test]
fn mutual_tls_with_an_acl_keeps_each_device_to_its_own_topics() {
    let lab = Lab::named("room-a");
    lab.pki(&["room-a", "room-b", "fleet-admin"]);
    let acl = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/mosquitto/neoflix.acl"
    ))
    .unwrap();
    let broker = Mosquitto::mutual_tls(&lab, &acl);
    let ca = lab.path("ca");
    lab.config(
        CAPTURE,
        2,
        &format!(
            "\n[mqtt]\nurl = \"{}\"\nca = \"{c}/ca.crt\"\ncert = \"{c}/room-a.crt\"\nkey = \"{c}/room-a.key\"\n",
            broker.url(true),
            c = ca.display()
        ),
    );
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(60));

    let admin = MqttProbe::tls(&broker, &lab, "fleet-admin", "neoflix/#");
    admin.wait(
        "neoflix/room-a/status",
        "room-a's status over mTLS",
        Duration::from_secs(15),
        |m| m.json["ready"] == true,
    );
    // Room B's certificate may not command room A nor forge its status.
    let b = MqttProbe::tls(&broker, &lab, "room-b", "neoflix/room-b/#");
    b.publish(
        "neoflix/room-a/cmd",
        br#"{"cmd":"start","request_id":"hijack"}"#,
        false,
    );
    b.publish(
        "neoflix/room-a/status",
        br#"{"state":"ready","forged":true}"#,
        true,
    );
    // Room A itself answers the admin, which proves commands do flow when allowed.
    admin.publish(
        "neoflix/room-a/cmd",
        br#"{"cmd":"ping","request_id":"admin"}"#,
        false,
    );
    admin.wait(
        "neoflix/room-a/reply",
        "reply to the admin",
        Duration::from_secs(10),
        reply_to("admin"),
    );
    assert!(
        admin
            .messages()
            .iter()
            .all(|m| m.json["request_id"] != "hijack" && m.json.get("forged").is_none()),
        "room-b reached room-a's topics"
    );
    assert_eq!(d.status().state, State::Ready);
    assert!(
        broker.log_text().contains("Denied PUBLISH from"),
        "{}",
        broker.log_text()
    );

    // The fleet view over mutual TLS.
    let fleet = fleet_json_as_admin(&lab, &broker);
    assert_eq!(fleet[0]["device"], "room-a", "{fleet}");
    assert_eq!(fleet.as_array().unwrap().len(), 1, "{fleet}");
    assert_eq!(d.terminate(), 0);
}

#[test]
fn fleet_lists_every_running_daemon() {
    let a = Lab::named("room-1");
    let broker = Mosquitto::plain(&a);
    let b = Lab::named("room-2");
    for lab in [&a, &b] {
        lab.config(CAPTURE, 2, &format!("\n{}", mqtt_section(&broker)));
    }
    let mut da = a.start();
    let mut db = b.start();
    da.wait_ready(Duration::from_secs(60));
    db.wait_ready(Duration::from_secs(60));
    db.ctl(neoflix_control::Request::Start {});
    let p = MqttProbe::plain(&broker, "neoflix/+/status");
    p.wait(
        "neoflix/room-2/status",
        "room-2 recording",
        Duration::from_secs(15),
        state_is("recording"),
    );
    p.wait(
        "neoflix/room-1/status",
        "room-1 ready",
        Duration::from_secs(15),
        state_is("ready"),
    );

    let out = neoflix(&["fleet", "--broker", &broker.url(false), "--once", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fleet: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = fleet.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{fleet}");
    assert_eq!(rows[0]["device"], "room-1");
    assert_eq!(rows[0]["state"], "ready");
    assert_eq!(rows[0]["ready"], true);
    assert_eq!(rows[1]["device"], "room-2");
    assert_eq!(rows[1]["state"], "recording");
    assert!(rows[1]["recording_secs"].as_f64().is_some(), "{fleet}");

    // The table for people lists both, one line each.
    let out = neoflix(&["fleet", "--broker", &broker.url(false), "--once"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("room-1") && table.contains("room-2"),
        "{table}"
    );
    assert_eq!(da.terminate(), 0);
    assert_eq!(db.terminate(), 0);
}

#[test]
fn privacy_over_mqtt_keeps_nothing_and_says_so() {
    let lab = Lab::new();
    let broker = Mosquitto::plain(&lab);
    lab.config(CAPTURE, 2, &format!("\n{}", mqtt_section(&broker)));
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(60));
    let t = "neoflix/room-e2e";
    let p = MqttProbe::plain(&broker, &format!("{t}/#"));
    let (cmd, reply, status) = (
        format!("{t}/cmd"),
        format!("{t}/reply"),
        format!("{t}/status"),
    );

    p.publish(
        &cmd,
        br#"{"cmd":"privacy","on":true,"request_id":"on"}"#,
        false,
    );
    assert_eq!(
        p.wait(
            &reply,
            "privacy reply",
            Duration::from_secs(10),
            reply_to("on")
        )
        .json["ok"],
        true
    );
    let s = p.wait(&status, "privacy status", Duration::from_secs(10), |m| {
        m.json["privacy"] == true
    });
    assert_eq!(s.json["state"], "privacy");
    assert_eq!(s.json["ready"], false);
    assert!(
        s.json["reasons"][0].as_str().unwrap().contains("privacy"),
        "{}",
        s.json
    );
    // Nothing kept: the ring is empty (its keys went with it) and stays empty.
    std::thread::sleep(Duration::from_secs(2));
    let ring: Vec<_> = std::fs::read_dir(lab.path("ring")).unwrap().collect();
    assert!(
        ring.is_empty(),
        "ring holds {} files in privacy mode",
        ring.len()
    );
    assert_eq!(d.status().preroll_secs, 0.0);
    p.publish(&cmd, br#"{"cmd":"start","request_id":"refused"}"#, false);
    let r = p.wait(
        &reply,
        "refusal",
        Duration::from_secs(10),
        reply_to("refused"),
    );
    assert!(
        r.json["error"].as_str().unwrap().contains("privacy"),
        "{}",
        r.json
    );

    p.publish(
        &cmd,
        br#"{"cmd":"privacy","on":false,"request_id":"off"}"#,
        false,
    );
    p.wait(
        &reply,
        "privacy-off reply",
        Duration::from_secs(10),
        reply_to("off"),
    );
    d.wait_ready(Duration::from_secs(60));
    assert_eq!(d.terminate(), 0);
}

/// Issue 15: a retained message over 1 MiB on the command topic made the daemon's MQTT client
/// drop the connection each time the broker delivered it, at every subscribe, in a loop: the
/// room showed `offline` until someone cleared the message. The box now tells the broker the
/// largest packet it takes (MQTT 5), so the broker keeps such a message back: the box stays
/// connected, visible and commanded.
#[test]
fn an_oversized_retained_command_does_not_cost_the_connection() {
    let lab = Lab::new();
    let broker = Mosquitto::plain(&lab);
    lab.config(CAPTURE, 2, &format!("\n{}", mqtt_section(&broker)));
    let t = "neoflix/room-e2e";
    let cmd = format!("{t}/cmd");
    let hostile = MqttProbe::plain(&broker, "neoflix/none");
    hostile.publish(&cmd, &vec![b'x'; 2 << 20], true);
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(60));
    let p = MqttProbe::plain(&broker, &format!("{t}/#"));
    p.wait(
        &format!("{t}/status"),
        "ready status",
        Duration::from_secs(15),
        |m| m.json["ready"] == true,
    );
    // Long enough for a few rounds of the old loop (one a second or so).
    std::thread::sleep(Duration::from_secs(8));
    p.publish(&cmd, br#"{"cmd":"ping","request_id":"after"}"#, false);
    let r = p.wait(
        &format!("{t}/reply"),
        "ping reply",
        Duration::from_secs(10),
        reply_to("after"),
    );
    assert_eq!(r.json["ok"], true);
    let offline: Vec<Message> = p
        .messages()
        .into_iter()
        .filter(|m| m.topic.ends_with("/status") && m.json["state"] == "offline")
        .collect();
    assert!(offline.is_empty(), "the room went offline: {offline:?}");
    let log = d.log_text();
    assert_eq!(
        log.matches("connected to the MQTT broker").count(),
        1,
        "{log}"
    );
    assert!(!log.contains("MQTT broker unreachable"), "{log}");
    assert_eq!(d.terminate(), 0);
}

/// Issue 15: 10 000 valid commands dropped 5 784 replies ("reply not queued") and logged a
/// line each. Now commands beyond the rate are answered busy, a `start` and a `stop` in the
/// flood are carried out and answered, and the flood is logged in summary.
#[test]
fn a_command_flood_is_rate_limited_and_start_and_stop_still_answered() {
    let lab = Lab::new();
    let broker = Mosquitto::plain(&lab);
    lab.config(CAPTURE, 2, &format!("\n{}", mqtt_section(&broker)));
    let t = "neoflix/room-e2e";
    let (cmd, reply) = (format!("{t}/cmd"), format!("{t}/reply"));
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(60));
    let p = MqttProbe::plain(&broker, &reply);
    let flood = MqttProbe::plain(&broker, "neoflix/none");
    for n in 0..3000 {
        let id = match n {
            1000 => "the-start".to_string(),
            2000 => "the-stop".to_string(),
            n => format!("f{n}"),
        };
        let c = match n {
            1000 => "start",
            2000 => "stop",
            _ => "ping",
        };
        flood.publish(
            &cmd,
            format!(r#"{{"cmd":"{c}","request_id":"{id}"}}"#).as_bytes(),
            false,
        );
    }
    let r = p.wait(
        &reply,
        "the start's reply",
        Duration::from_secs(30),
        reply_to("the-start"),
    );
    assert_eq!(r.json["ok"], true, "{}", r.json);
    let r = p.wait(
        &reply,
        "the stop's reply",
        Duration::from_secs(30),
        reply_to("the-stop"),
    );
    assert_eq!(r.json["ok"], true, "{}", r.json);
    d.wait_for("the recording finalized", Duration::from_secs(30), |s| {
        s.recordings_finalized == 1
    });
    // The first ones got their turn; the rest were refused (answered busy while the client's
    // queue had room: a flood's busy replies may themselves be dropped, a start's or a stop's
    // reply never).
    std::thread::sleep(Duration::from_secs(11));
    p.publish(&cmd, br#"{"cmd":"ping","request_id":"after"}"#, false);
    p.wait(
        &reply,
        "a ping after the flood",
        Duration::from_secs(10),
        reply_to("after"),
    );
    let replies = p.messages();
    let busy = replies
        .iter()
        .filter(|m| {
            m.json["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("busy"))
        })
        .count();
    assert!(busy > 0, "no busy replies");
    let log = d.log_text();
    assert!(!log.contains("reply not queued"), "{log}");
    let lines = log
        .lines()
        .filter(|l| l.contains("MQTT") && !l.starts_with("DEBUG"))
        .count();
    assert!(
        lines < 20,
        "{lines} MQTT lines logged for the flood:\n{log}"
    );
    assert!(
        log.contains("MQTT messages ignored in the last 10 s:")
            && log.contains("over the command rate"),
        "{log}"
    );
    assert_eq!(d.terminate(), 0);
}

/// Issue 14: a group of hospitals runs a broker per site, bridged to a central one. A box on a
/// site's broker is seen, commanded, listed by the fleet view and seen going offline from the
/// central broker, through the bridge exactly as `config/mosquitto/site-bridge.conf` sets it up
/// (only its address and certificate paths changed), both brokers with the shipped ACL.
#[test]
fn a_box_on_a_site_broker_is_seen_and_commanded_from_the_central_broker_through_a_bridge() {
    let lab = Lab::named("room-a");
    lab.pki(&["room-a", "fleet-admin", "bridge-site-a"]);
    let acl = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/mosquitto/neoflix.acl"
    ))
    .unwrap();
    let central = Mosquitto::mutual_tls(&lab, &acl);
    let ca = lab.path("ca");
    let bridge = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/mosquitto/site-bridge.conf"
    ))
    .unwrap()
    .replace(
        "central-broker.example:8883",
        &format!("127.0.0.1:{}", central.port),
    )
    .replace("/etc/mosquitto/neoflix", &ca.display().to_string());
    let site = Mosquitto::mutual_tls_with(&lab, &acl, &bridge);
    lab.config(
        CAPTURE,
        2,
        &format!(
            "\n[mqtt]\nurl = \"{}\"\nca = \"{c}/ca.crt\"\ncert = \"{c}/room-a.crt\"\nkey = \"{c}/room-a.key\"\n",
            site.url(true),
            c = ca.display()
        ),
    );
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(60));

    let admin = MqttProbe::tls(&central, &lab, "fleet-admin", "neoflix/#");
    // The bridge says it is up, where the fleet's people may read it.
    let links = MqttProbe::tls(&central, &lab, "fleet-admin", "neoflix-bridge/#");
    links.wait(
        "neoflix-bridge/site-a/state",
        "the bridge's state at the centre",
        Duration::from_secs(30),
        |m| m.json == 1,
    );
    admin.wait(
        "neoflix/room-a/status",
        "room-a's status on the central broker",
        Duration::from_secs(30),
        |m| m.json["ready"] == true,
    );
    // Commands come in across the bridge, replies and events go out.
    admin.publish(
        "neoflix/room-a/cmd",
        br#"{"cmd":"start","request_id":"central"}"#,
        false,
    );
    let reply = admin.wait(
        "neoflix/room-a/reply",
        "the reply to a command from the centre",
        Duration::from_secs(20),
        reply_to("central"),
    );
    assert_eq!(reply.json["ok"], true, "{}", reply.json);
    admin.wait(
        "neoflix/room-a/event",
        "recording_started on the central broker",
        Duration::from_secs(20),
        |m| m.json["event"] == "recording_started",
    );
    // The fleet view on the central broker lists the room, from its retained status.
    let fleet_once = || fleet_json_as_admin(&lab, &central);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let fleet = fleet_once();
        if fleet[0]["state"] == "recording" {
            assert_eq!(fleet[0]["device"], "room-a", "{fleet}");
            break;
        }
        assert!(Instant::now() < deadline, "{fleet}");
        std::thread::sleep(Duration::from_millis(500));
    }
    // A box that dies: its last will, published by the site broker, reaches the centre.
    d.kill9();
    admin.wait(
        "neoflix/room-a/status",
        "room-a offline on the central broker",
        Duration::from_secs(45),
        state_is("offline"),
    );
    assert_eq!(fleet_once()[0]["state"], "offline");
}
