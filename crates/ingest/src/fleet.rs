//! The fleet tiles' data: every room box's retained status from the department broker
//! (`[mqtt]`), read with the same view `neoflix fleet` uses ([`neoflix_mqtt::fleet::Fleet`]).
//! Bounded: a status payload over [`MAX_PAYLOAD`] is taken as unreadable, and at most
//! [`MAX_DEVICES`] devices are kept.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use neoflix_mqtt::fleet::Fleet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::config::Mqtt;

/// Largest status payload read (a status is about a kilobyte).
pub const MAX_PAYLOAD: usize = 16 * 1024;
/// Most devices kept.
pub const MAX_DEVICES: usize = 1000;

/// The latest status of each device.
#[derive(Default)]
pub struct FleetView {
    fleet: Mutex<Fleet>,
}

impl FleetView {
    /// Takes a message of `device`'s status topic. A topic whose device part could not be a
    /// device id (what a certificate's common name may be: 1–64 of `A–Z a–z 0–9 - _ .`) is
    /// not a box's: dropped, so whoever may publish on the broker cannot put markup or
    /// kilobytes of name into the tiles.
    pub fn update(&self, device: &str, payload: &[u8]) {
        if device.len() > 64 || !neoflix_format::protocol::valid_recording_id(device) {
            log::debug!(device = crate::esc(&device.chars().take(80).collect::<String>()).as_str(); "fleet: a status topic whose device part is not a device id; ignored");
            return;
        }
        let mut f = self.fleet.lock().unwrap_or_else(|e| e.into_inner());
        if f.get(device).is_none() && f.len() >= MAX_DEVICES && !payload.is_empty() {
            log::warn!(device = crate::esc(device).as_str(); "fleet: more than 1000 devices publish a status; this one is not shown");
            return;
        }
        if payload.len() > MAX_PAYLOAD {
            f.update(device, b"\"status larger than 64 KiB\"");
        } else {
            f.update(device, payload);
        }
    }

    /// `{"devices": [...]}` as `/api/fleet` answers: `neoflix fleet --once --json`'s rows, with
    /// `updated_utc` (when the box took its status).
    pub fn json(&self, now: OffsetDateTime) -> serde_json::Value {
        let f = self.fleet.lock().unwrap_or_else(|e| e.into_inner());
        let devices: Vec<serde_json::Value> = f
            .rows(now)
            .into_iter()
            .map(|r| {
                let updated = r.status.map(|s| s.time_utc.clone());
                let mut v = serde_json::to_value(&r).expect("rows serialize");
                v["updated_utc"] = serde_json::json!(updated);
                v
            })
            .collect();
        serde_json::json!({ "devices": devices })
    }
}

/// Subscribes to every device's status until `stop`: reconnects with backoff, subscribes again
/// on every connection acknowledgement (the broker forgets a clean session's subscriptions).
pub async fn run(cfg: Mqtt, view: Arc<FleetView>, mut stop: watch::Receiver<bool>) {
    let broker = match neoflix_mqtt::Broker::new(&cfg.url, cfg.ca.clone(), cfg.identity.clone()) {
        Ok(b) => b,
        Err(e) => {
            log::error!(error = crate::esc(&e.to_string()).as_str(); "mqtt: the broker settings are unusable; no fleet view");
            return;
        }
    };
    let mut opts = match broker.options(&format!("neoflix-ingest-{}", std::process::id())) {
        Ok(o) => o,
        Err(e) => {
            log::error!(error = crate::esc(&e.to_string()).as_str(); "mqtt: cannot set up the connection; no fleet view");
            return;
        }
    };
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(opts, 16);
    let filter = neoflix_mqtt::all_status(&cfg.prefix);
    let mut backoff = neoflix_mqtt::Backoff::new(Duration::from_secs(60));
    loop {
        let ev = tokio::select! {
            _ = stop.changed() => break,
            ev = events.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.connected(std::time::Instant::now());
                log::info!(broker = crate::esc(&cfg.url).as_str(); "mqtt: connected; subscribing to every status");
                // Never awaited inside the poll loop: the request queue is drained by poll.
                if let Err(e) = client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                    log::warn!(error = crate::esc(&e.to_string()).as_str(); "mqtt: cannot subscribe");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if let Ok(topic) = std::str::from_utf8(&p.topic)
                    && let Some(device) = neoflix_mqtt::device_of_status(&cfg.prefix, topic)
                {
                    view.update(device, &p.payload);
                }
            }
            Ok(_) => {}
            Err(e) => {
                let wait = backoff.failed(std::time::Instant::now());
                log::warn!(broker = crate::esc(&cfg.url).as_str(), error = crate::esc(&e.to_string()).as_str(), retry_secs = wait.as_secs(); "mqtt: broker unreachable; the fleet view keeps the last statuses");
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    let _ = client.try_disconnect();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_view_is_bounded_and_answers_the_documented_fields() {
        let v = FleetView::default();
        v.update("room-1", neoflix_mqtt::OFFLINE.as_bytes());
        v.update("room-2", &vec![b' '; MAX_PAYLOAD + 1]);
        for i in 0..MAX_DEVICES + 5 {
            v.update(&format!("x-{i}"), neoflix_mqtt::OFFLINE.as_bytes());
        }
        let j = v.json(OffsetDateTime::now_utc());
        let d = j["devices"].as_array().unwrap();
        assert_eq!(d.len(), MAX_DEVICES);
        let r1 = d.iter().find(|r| r["device"] == "room-1").unwrap();
        for f in ["device", "ready", "reasons", "state", "updated_utc"] {
            assert!(r1.get(f).is_some(), "{f}: {r1}");
        }
        assert_eq!(r1["state"], "offline");
        let r2 = d.iter().find(|r| r["device"] == "room-2").unwrap();
        assert_eq!(r2["state"], "unreadable");
    }

    #[test]
    fn a_topic_that_names_no_device_id_is_not_shown() {
        let v = FleetView::default();
        let long = "r".repeat(65);
        for bad in [
            "<img src=x onerror=alert(1)>",
            "room 1",
            ".hidden",
            long.as_str(),
            "r\u{1b}[2J",
        ] {
            v.update(bad, neoflix_mqtt::OFFLINE.as_bytes());
        }
        v.update("room-1", neoflix_mqtt::OFFLINE.as_bytes());
        let j = v.json(OffsetDateTime::now_utc());
        let d = j["devices"].as_array().unwrap();
        assert_eq!(d.len(), 1, "{j}");
        assert_eq!(d[0]["device"], "room-1");
    }
}
