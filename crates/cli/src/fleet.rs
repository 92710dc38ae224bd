//! `neoflix fleet`: every room box's retained status from the department broker, as a table that
//! refreshes in place, or once as JSON for scripts.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rumqttc::{Client, Event, Packet, QoS};
use serde_json::{Value, json};

/// `neoflix fleet`'s options.
#[derive(clap::Args)]
pub struct Args {
    /// The broker: `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]`.
    #[arg(long)]
    broker: String,
    /// CA certificate of the broker (mqtts).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate (mutual TLS).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Client key (mutual TLS).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Topic prefix.
    #[arg(long, default_value = "neoflix")]
    prefix: String,
    /// Print once and exit.
    #[arg(long)]
    once: bool,
    /// With --once: a JSON array, one object per device.
    #[arg(long, requires = "once")]
    json: bool,
}

/// A status older than this is shown as stale: the box publishes at least every few minutes.
const STALE_SECS: i64 = 180;

fn age_secs(status: &Value) -> Option<i64> {
    let t = status.get("time_utc")?.as_str()?;
    let t = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()?;
    Some((time::OffsetDateTime::now_utc() - t).whole_seconds().max(0))
}

/// One device's row, for JSON.
fn row(device: &str, status: &Value) -> Value {
    let upload = status.get("upload");
    json!({
        "device": device,
        "state": status.get("state").cloned().unwrap_or(Value::Null),
        "ready": status.get("ready").and_then(Value::as_bool).unwrap_or(false),
        "reasons": status.get("reasons").cloned().unwrap_or_else(|| json!([])),
        "recording": status.get("recording").cloned().unwrap_or(Value::Null),
        "recording_secs": status.get("recording_secs").cloned().unwrap_or(Value::Null),
        "upload_recordings": upload.and_then(|u| u.get("recordings")).cloned().unwrap_or(Value::Null),
        "upload_bytes": upload.and_then(|u| u.get("bytes")).cloned().unwrap_or(Value::Null),
        "upload_last_error": upload.and_then(|u| u.get("last_error")).cloned().unwrap_or(Value::Null),
        "storage_free_bytes": status.get("storage_free_bytes").cloned().unwrap_or(Value::Null),
        "full_recording_fits": status.get("full_recording_fits").cloned().unwrap_or(Value::Null),
        "last_seen_secs": age_secs(status),
        "status": status,
    })
}

fn table(devices: &BTreeMap<String, Value>) -> String {
    let mut out = format!(
        "{:<16} {:<10} {:<5} {:<9} {:<11} {:<9} {:<9} {}\n",
        "DEVICE", "STATE", "READY", "RECORDING", "QUEUE", "FREE", "SEEN", "WHY NOT READY"
    );
    for (device, s) in devices {
        let state = s.get("state").and_then(Value::as_str).unwrap_or("?");
        let ready = s.get("ready").and_then(Value::as_bool).unwrap_or(false);
        let recording = s
            .get("recording_secs")
            .and_then(Value::as_f64)
            .map(|t| format!("{}:{:02}", t as u64 / 60, t as u64 % 60))
            .unwrap_or_else(|| "-".into());
        let queue = s
            .get("upload")
            .map(|u| {
                format!(
                    "{} / {} MB",
                    u.get("recordings").and_then(Value::as_u64).unwrap_or(0),
                    u.get("bytes").and_then(Value::as_u64).unwrap_or(0) / 1_000_000
                )
            })
            .unwrap_or_else(|| "-".into());
        let free = s
            .get("storage_free_bytes")
            .and_then(Value::as_u64)
            .map(|b| format!("{:.1} GB", b as f64 / 1e9))
            .unwrap_or_else(|| "-".into());
        let seen = match age_secs(s) {
            Some(a) if a > STALE_SECS => format!("{a}s STALE"),
            Some(a) => format!("{a}s ago"),
            None => "-".into(),
        };
        let why = s
            .get("reasons")
            .and_then(Value::as_array)
            .map(|r| {
                r.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<16} {:<10} {:<5} {:<9} {:<11} {:<9} {:<9} {}\n",
            device,
            state,
            if ready { "yes" } else { "NO" },
            recording,
            queue,
            free,
            seen,
            why
        ));
    }
    if devices.is_empty() {
        out.push_str("(no device has published a status yet)\n");
    }
    out
}

pub fn run(a: Args) -> anyhow::Result<()> {
    neoflix_config::check_topic_prefix(&a.prefix).map_err(anyhow::Error::msg)?;
    let identity = a.cert.zip(a.key);
    let broker = neoflix_mqtt::Broker::new(&a.broker, a.ca, identity)?;
    let mut opts = broker.options(&format!("neoflix-fleet-{}", std::process::id()))?;
    opts.set_keep_alive(Duration::from_secs(10));
    let (client, mut conn) = Client::new(opts, 16);
    neoflix_mqtt::no_delay(&mut conn.eventloop);
    let filter = neoflix_mqtt::all_status(&a.prefix);
    let mut devices: BTreeMap<String, Value> = BTreeMap::new();
    let mut subscribed: Option<Instant> = None;
    let mut last_message = Instant::now();
    let mut last_error: Option<String> = None;
    let mut drawn = Instant::now() - Duration::from_secs(10);
    let mut dirty = true;
    let started = Instant::now();
    let live_terminal = !a.once && std::io::stdout().is_terminal();
    loop {
        match conn.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                last_error = None;
                client
                    .try_subscribe(filter.clone(), QoS::AtLeastOnce)
                    .context("subscribing")?;
            }
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                subscribed.get_or_insert_with(Instant::now);
                dirty = true;
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                if let Some(device) = neoflix_mqtt::device_of_status(&a.prefix, &p.topic) {
                    if p.payload.is_empty() {
                        devices.remove(device);
                    } else {
                        let v = serde_json::from_slice(&p.payload)
                            .unwrap_or_else(|_| json!({"state": "unreadable status"}));
                        devices.insert(device.to_string(), v);
                    }
                    last_message = Instant::now();
                    dirty = true;
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                if a.once {
                    bail!("cannot reach the broker {}: {e}", a.broker);
                }
                last_error = Some(e.to_string());
                dirty = true;
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(rumqttc::RecvTimeoutError::Timeout) => {}
            Err(rumqttc::RecvTimeoutError::Disconnected) => bail!("MQTT connection closed"),
        }
        if a.once {
            // Retained statuses arrive right after the subscription is acknowledged; half a
            // second without a new one means all are in.
            let settled = subscribed.is_some_and(|s| {
                s.elapsed() >= Duration::from_millis(500)
                    && last_message.elapsed() >= Duration::from_millis(500)
            });
            if settled {
                break;
            }
            if started.elapsed() > Duration::from_secs(15) {
                bail!("the broker {} did not answer the subscription", a.broker);
            }
            continue;
        }
        if dirty && drawn.elapsed() >= Duration::from_millis(250)
            || drawn.elapsed() >= Duration::from_secs(1)
        {
            let mut out = std::io::stdout().lock();
            if live_terminal {
                // Home and clear: refresh in place.
                let _ = write!(out, "\x1b[H\x1b[2J");
            }
            let _ = writeln!(
                out,
                "neoflix fleet: {} ({} devices){}",
                a.broker,
                devices.len(),
                last_error
                    .as_deref()
                    .map(|e| format!(" - broker unreachable: {e}"))
                    .unwrap_or_default()
            );
            let _ = write!(out, "{}", table(&devices));
            let _ = out.flush();
            drawn = Instant::now();
            dirty = false;
        }
    }
    let _ = client.try_disconnect();
    if a.json {
        let rows: Vec<Value> = devices.iter().map(|(d, s)| row(d, s)).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", table(&devices));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_table_show_what_is_known_and_survive_what_is_not() {
        let mut d = BTreeMap::new();
        d.insert("room-1".to_string(), json!({"state": "offline"}));
        d.insert(
            "room-2".to_string(),
            json!({"state": "recording", "ready": false, "reasons": ["clock not synchronised"],
                   "recording_secs": 75.0, "upload": {"recordings": 1, "bytes": 2_000_000},
                   "time_utc": "2020-01-01T00:00:00Z"}),
        );
        let t = table(&d);
        assert!(t.contains("room-1") && t.contains("offline"), "{t}");
        assert!(
            t.contains("1:15") && t.contains("1 / 2 MB") && t.contains("STALE"),
            "{t}"
        );
        assert!(t.contains("clock not synchronised"), "{t}");
        let r = row("room-1", &d["room-1"]);
        assert_eq!(r["ready"], false);
        assert_eq!(r["last_seen_secs"], Value::Null);
        let _ = table(&BTreeMap::new());
    }
}
