//! The fleet's MQTT contract, shared by `neoflixd` (which publishes) and `neoflix fleet` (which
//! watches): topic names, the command, reply and event payloads, Home Assistant discovery, and
//! broker connection settings (plain or TLS, with a client certificate).
//!
//! Topics (prefix configurable, default `neoflix`; specified in `docs/mqtt.md`):
//! - `<prefix>/<device>/status`: retained JSON status, last will `{"state":"offline"}`;
//! - `<prefix>/<device>/event`: recording started/stopped, marker, upload done, fault;
//! - `<prefix>/<device>/cmd`: JSON commands, answered on `<prefix>/<device>/reply`.
//!
//! ```
//! let c = neoflix_mqtt::parse_command(br#"{"cmd":"mark","label":"intubation","request_id":"7"}"#, "room-1").unwrap();
//! assert_eq!(c.action, neoflix_mqtt::Action::Mark { label: "intubation".into() });
//! assert!(neoflix_mqtt::parse_command(br#"{"cmd":"start","device":"room-2"}"#, "room-1").is_err());
//! ```
#![deny(missing_docs)]

pub mod fleet;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Commands larger than this are refused unread: a command is a few dozen bytes.
pub const MAX_COMMAND_BYTES: usize = 4096;

/// The largest MQTT packet our clients take (and tell the broker, [`Broker::options`]): far
/// above any status, event or command of ours.
pub const MAX_PACKET_BYTES: u32 = 1 << 20;

/// The status payload the broker publishes for a device that vanished.
pub const OFFLINE: &str = r#"{"state":"offline"}"#;

/// One device's topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// `<prefix>/<device>/status`
    pub status: String,
    /// `<prefix>/<device>/event`
    pub event: String,
    /// `<prefix>/<device>/cmd`
    pub cmd: String,
    /// `<prefix>/<device>/reply`
    pub reply: String,
}

impl Topics {
    /// The topics of `device` under `prefix`.
    pub fn new(prefix: &str, device: &str) -> Topics {
        let t = |leaf: &str| format!("{prefix}/{device}/{leaf}");
        Topics {
            status: t("status"),
            event: t("event"),
            cmd: t("cmd"),
            reply: t("reply"),
        }
    }
}

/// The subscription that sees every device's status.
pub fn all_status(prefix: &str) -> String {
    format!("{prefix}/+/status")
}

/// The device named by a status topic, if `topic` is one under `prefix`.
pub fn device_of_status<'t>(prefix: &str, topic: &'t str) -> Option<&'t str> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    let device = rest.strip_suffix("/status")?;
    (!device.is_empty() && !device.contains('/')).then_some(device)
}

/// What a command asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a recording (the pre-roll is its beginning).
    Start,
    /// Stop the recording (post-roll applies).
    Stop,
    /// Add a marker.
    Mark {
        /// Free text, may be empty.
        label: String,
    },
    /// Switch privacy mode.
    Privacy {
        /// On or off.
        on: bool,
    },
    /// Answer, nothing else: is the daemon alive and listening?
    Ping,
}

impl Action {
    /// The command's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Mark { .. } => "mark",
            Action::Privacy { .. } => "privacy",
            Action::Ping => "ping",
        }
    }
}

/// A command from `<prefix>/<device>/cmd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Echoed in the reply so the sender can match it.
    pub request_id: Option<String>,
    /// What to do.
    pub action: Action,
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CommandError {
    /// Larger than [`MAX_COMMAND_BYTES`].
    #[error("command of {0} bytes refused: at most {MAX_COMMAND_BYTES}")]
    TooLarge(usize),
    /// Not a JSON object of the documented shape.
    #[error("malformed command: {0} (see docs/mqtt.md)")]
    Malformed(String),
    /// A `cmd` this daemon does not know.
    #[error("unknown command '{0}': use start, stop, mark, privacy or ping")]
    Unknown(String),
    /// Addressed to another device (its `device` field names someone else).
    #[error("command addressed to device '{0}', not to this one")]
    WrongDevice(String),
}

impl CommandError {
    /// The request id, if the payload was readable enough to have one.
    pub fn request_id_of(payload: &[u8]) -> Option<String> {
        if payload.len() > MAX_COMMAND_BYTES {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
        let id = v.get("request_id")?.as_str()?;
        (id.len() <= 128).then(|| id.to_string())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommand {
    cmd: String,
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    on: Option<bool>,
}

/// Reads a command meant for `device`.
pub fn parse_command(payload: &[u8], device: &str) -> Result<Command, CommandError> {
    if payload.len() > MAX_COMMAND_BYTES {
        return Err(CommandError::TooLarge(payload.len()));
    }
    let raw: RawCommand =
        serde_json::from_slice(payload).map_err(|e| CommandError::Malformed(e.to_string()))?;
    if let Some(id) = &raw.request_id
        && id.len() > 128
    {
        return Err(CommandError::Malformed(
            "request_id longer than 128 characters".into(),
        ));
    }
    if let Some(d) = &raw.device
        && d != device
    {
        return Err(CommandError::WrongDevice(shorten(d)));
    }
    let only = |field: &str, present: bool| {
        if present {
            Err(CommandError::Malformed(format!(
                "'{field}' does not belong to '{}'",
                raw.cmd
            )))
        } else {
            Ok(())
        }
    };
    let action = match raw.cmd.as_str() {
        "start" | "stop" | "ping" => {
            only("label", raw.label.is_some())?;
            only("on", raw.on.is_some())?;
            match raw.cmd.as_str() {
                "start" => Action::Start,
                "stop" => Action::Stop,
                _ => Action::Ping,
            }
        }
        "mark" => {
            only("on", raw.on.is_some())?;
            let label = raw.label.clone().unwrap_or_default();
            if label.len() > 256 {
                return Err(CommandError::Malformed(
                    "label longer than 256 characters".into(),
                ));
            }
            Action::Mark { label }
        }
        "privacy" => {
            only("label", raw.label.is_some())?;
            Action::Privacy {
                on: raw.on.ok_or_else(|| {
                    CommandError::Malformed("privacy needs \"on\": true or false".into())
                })?,
            }
        }
        other => return Err(CommandError::Unknown(shorten(other))),
    };
    Ok(Command {
        request_id: raw.request_id,
        action,
    })
}

/// Cuts a name taken from a command to 64 characters (not bytes: a byte index can fall inside a
/// multi-byte character), so a reply or a log line never echoes kilobytes back.
fn shorten(name: &str) -> String {
    const MAX_CHARS: usize = 64;
    match name.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &name[..cut]),
        None => name.to_string(),
    }
}

/// The answer to a command, on `<prefix>/<device>/reply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandReply {
    /// The command's `request_id`, if it had a readable one.
    pub request_id: Option<String>,
    /// The command, when it was readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    /// Whether it was carried out.
    pub ok: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The recording concerned (start, stop, mark).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<String>,
}

/// Something that happened on a device, on `<prefix>/<device>/event` (not retained).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A recording began (with its pre-roll).
    RecordingStarted {
        /// The recording.
        recording: String,
        /// `pedal`, `mqtt` or `control`.
        trigger: String,
        /// Seconds of pre-roll it begins with.
        preroll_secs: f64,
    },
    /// A recording was finalized.
    RecordingStopped {
        /// The recording.
        recording: String,
        /// `pedal`, `mqtt`, `control`, `max_duration`, `privacy`, `shutdown`.
        reason: String,
        /// Seconds of video.
        duration_secs: f64,
    },
    /// A marker was added.
    Marker {
        /// The recording.
        recording: String,
        /// Seconds from the recording's start.
        offset_secs: f64,
        /// Who added it.
        by: String,
        /// Whether it has a label. The text itself is sealed in the recording: a broker is no
        /// place for words about a patient.
        labelled: bool,
    },
    /// The department server confirmed a recording; the box deleted its copy.
    UploadDone {
        /// The recording.
        recording: String,
    },
    /// Something stopped working: camera, storage, an input device.
    Fault {
        /// `camera`, `microphone`, `encoder`, `storage`, `pedal`, `foot_switch`,
        /// `privacy_switch`.
        component: String,
        /// What is wrong.
        reason: String,
    },
}

/// An [`Event`] with its device and time, as published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Published {
    /// The device.
    pub device: String,
    /// RFC 3339 UTC.
    pub time_utc: String,
    /// The event.
    #[serde(flatten)]
    pub event: Event,
}

/// Home Assistant MQTT discovery: `(topic, retained payload)` pairs for a `ready` and a
/// `recording` binary sensor and a `start` button, all tied to the status topic's availability.
pub fn home_assistant_discovery(
    discovery_prefix: &str,
    topics: &Topics,
    device: &str,
    version: &str,
) -> Vec<(String, String)> {
    // Home Assistant ids allow letters, digits, '_' and '-'; device ids also allow '.'.
    let uid = format!("neoflix_{}", device.replace('.', "_"));
    let dev = serde_json::json!({
        "identifiers": [uid],
        "name": format!("Neoflix {device}"),
        "manufacturer": "Neoflix",
        "model": "neoflixd",
        "sw_version": version,
    });
    let availability = serde_json::json!({
        "topic": topics.status,
        "value_template": "{{ 'offline' if value_json.state == 'offline' else 'online' }}",
        "payload_available": "online",
        "payload_not_available": "offline",
    });
    let entity = |component: &str, object: &str, mut body: serde_json::Value| {
        body["unique_id"] = format!("{uid}_{object}").into();
        body["object_id"] = format!("{uid}_{object}").into();
        body["device"] = dev.clone();
        body["availability"] = serde_json::json!([availability.clone()]);
        (
            format!("{discovery_prefix}/{component}/{uid}/{object}/config"),
            body.to_string(),
        )
    };
    vec![
        entity(
            "binary_sensor",
            "ready",
            serde_json::json!({
                "name": "Ready",
                "state_topic": topics.status,
                "value_template": "{{ 'ON' if value_json.ready else 'OFF' }}",
                "json_attributes_topic": topics.status,
                "json_attributes_template": "{{ {'reasons': value_json.reasons} | tojson }}",
                "icon": "mdi:check-circle",
            }),
        ),
        entity(
            "binary_sensor",
            "recording",
            serde_json::json!({
                "name": "Recording",
                "state_topic": topics.status,
                "value_template": "{{ 'ON' if value_json.state == 'recording' else 'OFF' }}",
                "icon": "mdi:record-rec",
            }),
        ),
        entity(
            "button",
            "start",
            serde_json::json!({
                "name": "Start recording",
                "command_topic": topics.cmd,
                "payload_press": r#"{"cmd":"start","request_id":"home-assistant"}"#,
                "icon": "mdi:record",
            }),
        ),
    ]
}

/// Where the broker is and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    /// Host name or address.
    pub host: String,
    /// Port (1883 plain, 8883 TLS by default).
    pub port: u16,
    /// TLS: the CA that issued the broker's certificate, and optionally this client's identity.
    pub tls: Option<Tls>,
}

/// TLS settings for the broker connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// CA certificate(s), PEM.
    pub ca: PathBuf,
    /// Client certificate and key, PEM (mutual TLS).
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// Why the broker settings are unusable.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The URL is not `mqtt://host[:port]` or `mqtts://host[:port]`.
    #[error("'{0}' is not an MQTT URL: use mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")]
    Url(String),
    /// `mqtts://` without a CA, or a CA with `mqtt://`.
    #[error("{0}")]
    Tls(String),
    /// A certificate or key file is unusable.
    #[error(transparent)]
    Certificate(#[from] neoflix_pki::PkiError),
}

impl Broker {
    /// Reads `mqtt://host[:port]` / `mqtts://host[:port]` with the TLS files that go with it.
    pub fn new(
        url: &str,
        ca: Option<PathBuf>,
        identity: Option<(PathBuf, PathBuf)>,
    ) -> Result<Broker, BrokerError> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(BrokerError::Url(url.into()));
        };
        let rest = rest.trim_end_matches('/');
        let default_port = if tls { 8883 } else { 1883 };
        let bad = || BrokerError::Url(url.into());
        // `[v6 address]:port`, `[v6 address]`, `host:port` or `host`.
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(bad)?;
            match after {
                "" => (host, default_port),
                p => (
                    host,
                    p.strip_prefix(':')
                        .ok_or_else(bad)?
                        .parse()
                        .map_err(|_| bad())?,
                ),
            }
        } else {
            match rest.split_once(':') {
                None => (rest, default_port),
                Some((h, p)) => (h, p.parse().map_err(|_| bad())?),
            }
        };
        if host.is_empty() || host.contains(['/', '@', '?']) {
            return Err(BrokerError::Url(url.into()));
        }
        let tls = match (tls, ca) {
            (true, Some(ca)) => Some(Tls { ca, identity }),
            (true, None) => {
                return Err(BrokerError::Tls(
                    "mqtts:// needs the CA certificate that issued the broker's certificate (ca)"
                        .into(),
                ));
            }
            (false, None) if identity.is_none() => None,
            (false, _) => {
                return Err(BrokerError::Tls(
                    "ca, cert and key are for mqtts:// URLs; this one is plain mqtt://".into(),
                ));
            }
        };
        Ok(Broker {
            host: host.to_string(),
            port,
            tls,
        })
    }

    /// MQTT 5 connection options for a client called `client_id`: TLS set up, Nagle off, and
    /// the broker told the largest packet this client takes ([`MAX_PACKET_BYTES`]). The caller
    /// adds the last will and keep-alive.
    ///
    /// MQTT 5 because of that limit: a broker keeps back a message larger than the client's
    /// "Maximum Packet Size" instead of sending it. Under 3.1.1 the client could only refuse
    /// one by closing the connection, and a retained one came again at every subscribe: one
    /// oversized retained message took a room box (or the fleet view) offline for good.
    pub fn options(&self, client_id: &str) -> Result<rumqttc::v5::MqttOptions, BrokerError> {
        let mut o = rumqttc::v5::MqttOptions::new(client_id, self.host.clone(), self.port);
        o.set_max_packet_size(Some(MAX_PACKET_BYTES));
        // MQTT messages are small, and a command or an event held back for the peer's delayed
        // ACK costs 40 ms per hop.
        let mut n = o.network_options();
        n.set_tcp_nodelay(true);
        o.set_network_options(n);
        if let Some(t) = &self.tls {
            let cfg = neoflix_pki::client_tls(
                &t.ca,
                t.identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            )?;
            o.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(Arc::new(cfg)),
            ));
        }
        Ok(o)
    }
}

/// A connection that lasted this long was a good one: the next failure is retried from the
/// shortest delay ([`Backoff::failed`]).
pub const STABLE: Duration = Duration::from_secs(30);

/// Reconnect delays: doubling from 1 s to `max`, each drawn at random from its upper half so that
/// a department's boxes do not all reconnect in the same instant after a broker restart.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
    /// When the current connection was acknowledged, while it is up.
    up_since: Option<std::time::Instant>,
}

impl Backoff {
    /// Starts at 1 s, never waits more than `max`.
    pub fn new(max: Duration) -> Backoff {
        Backoff {
            next: Duration::from_secs(1),
            max,
            up_since: None,
        }
    }

    /// The broker acknowledged a connection at `at`.
    pub fn connected(&mut self, at: std::time::Instant) {
        self.up_since = Some(at);
    }

    /// The connection, or an attempt at one, failed at `now`: the delay before the next
    /// attempt. The delays start over only after a connection that lasted [`STABLE`]: one that
    /// the broker (or something between, or another client with the same id) ends at once is
    /// not retried in a tight loop.
    pub fn failed(&mut self, now: std::time::Instant) -> Duration {
        if let Some(since) = self.up_since.take()
            && now.saturating_duration_since(since) >= STABLE
        {
            self.reset();
        }
        self.next_delay()
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let mut r = [0u8; 2];
        let _ = getrandom::fill(&mut r);
        let frac = 0.5 + f64::from(u16::from_le_bytes(r)) / f64::from(u16::MAX) / 2.0;
        d.mul_f64(frac)
    }

    /// After a successful connection.
    pub fn reset(&mut self) {
        self.next = Duration::from_secs(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_connection_that_lasted_starts_the_delays_over() {
        let t0 = std::time::Instant::now();
        let mut b = Backoff::new(Duration::from_secs(60));
        // Each delay is drawn from the upper half of 1, 2, 4, ... s.
        let within = |d: Duration, full: u64| {
            d >= Duration::from_secs(full) / 2 && d <= Duration::from_secs(full)
        };
        assert!(within(b.failed(t0), 1));
        assert!(within(b.failed(t0), 2));
        // Acknowledged, then dropped at once (a client id another box also uses): no reset.
        for full in [4, 8, 16, 32, 60, 60] {
            b.connected(t0);
            assert!(within(b.failed(t0 + Duration::from_millis(100)), full));
        }
        // A connection that lasted: back to 1 s.
        b.connected(t0);
        assert!(within(b.failed(t0 + STABLE), 1));
        // A failure with no connection since does not count the old one again.
        assert!(within(b.failed(t0 + STABLE * 3), 2));
    }

    #[test]
    fn commands_parse_and_bad_ones_say_why() {
        let ok = |s: &str| parse_command(s.as_bytes(), "room-1").unwrap();
        assert_eq!(ok(r#"{"cmd":"start"}"#).action, Action::Start);
        assert_eq!(
            ok(r#"{"cmd":"stop","request_id":"a","device":"room-1"}"#),
            Command {
                request_id: Some("a".into()),
                action: Action::Stop
            }
        );
        assert_eq!(
            ok(r#"{"cmd":"privacy","on":true}"#).action,
            Action::Privacy { on: true }
        );
        assert_eq!(
            ok(r#"{"cmd":"mark"}"#).action,
            Action::Mark {
                label: String::new()
            }
        );
        assert_eq!(ok(r#"{"cmd":"ping"}"#).action, Action::Ping);

        let err = |s: &[u8]| parse_command(s, "room-1").unwrap_err();
        assert!(matches!(err(b"not json"), CommandError::Malformed(_)));
        assert!(matches!(err(b"[1,2]"), CommandError::Malformed(_)));
        assert!(matches!(
            err(br#"{"cmd":"start","extra":1}"#),
            CommandError::Malformed(_)
        ));
        assert!(matches!(
            err(br#"{"cmd":"privacy"}"#),
            CommandError::Malformed(_)
        ));
        assert!(matches!(
            err(br#"{"cmd":"start","label":"x"}"#),
            CommandError::Malformed(_)
        ));
        assert_eq!(
            err(br#"{"cmd":"explode"}"#),
            CommandError::Unknown("explode".into())
        );
        assert_eq!(
            err(br#"{"cmd":"start","device":"room-2"}"#),
            CommandError::WrongDevice("room-2".into())
        );
        let big = format!(r#"{{"cmd":"mark","label":"{}"}}"#, "x".repeat(5000));
        assert!(matches!(
            err(big.as_bytes()),
            CommandError::TooLarge(n) if n == big.len()
        ));
        assert_eq!(
            CommandError::request_id_of(br#"{"cmd":"explode","request_id":"r9"}"#),
            Some("r9".into())
        );
    }

    #[test]
    fn long_names_are_cut_on_character_boundaries() {
        // 63 ASCII bytes then a 2-byte 'é' straddling byte 64: a byte-index cut panicked here.
        let cmd = format!(r#"{{"cmd":"{}é"}}"#, "a".repeat(63));
        assert_eq!(
            parse_command(cmd.as_bytes(), "room-1").unwrap_err(),
            CommandError::Unknown("a".repeat(63) + "é")
        );
        let long = format!(r#"{{"cmd":"{}"}}"#, "é".repeat(100));
        assert_eq!(
            parse_command(long.as_bytes(), "room-1").unwrap_err(),
            CommandError::Unknown("é".repeat(64) + "…")
        );
        let device = format!(r#"{{"cmd":"ping","device":"{}"}}"#, "д".repeat(200));
        assert_eq!(
            parse_command(device.as_bytes(), "room-1").unwrap_err(),
            CommandError::WrongDevice("д".repeat(64) + "…")
        );
    }

    #[test]
    fn random_bytes_never_panic_the_parser() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let base = br#"{"cmd":"mark","label":"a","request_id":"1","on":true}"#;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut b = base.to_vec();
            let pos = seed as usize % b.len();
            b[pos] = (seed >> 32) as u8;
            b.truncate((seed >> 40) as usize % (b.len() + 1));
            let _ = parse_command(&b, "room-1");
            let _ = CommandError::request_id_of(&b);
        }
    }

    #[test]
    fn broker_urls() {
        let b = Broker::new("mqtt://127.0.0.1:1884", None, None).unwrap();
        assert_eq!(
            (b.host.as_str(), b.port, b.tls.is_none()),
            ("127.0.0.1", 1884, true)
        );
        assert_eq!(Broker::new("mqtt://broker", None, None).unwrap().port, 1883);
        let t = Broker::new("mqtts://broker.nicu", Some("/ca".into()), None).unwrap();
        assert_eq!(t.port, 8883);
        assert!(Broker::new("mqtts://broker", None, None).is_err());
        assert!(Broker::new("http://broker", None, None).is_err());
        assert!(Broker::new("mqtt://broker:99999", None, None).is_err());
        assert!(Broker::new("mqtt://", None, None).is_err());
        assert!(Broker::new("mqtt://b", Some("/ca".into()), None).is_err());
        let v6 = Broker::new("mqtt://[::1]:1884", None, None).unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 1884));
        assert_eq!(
            Broker::new("mqtt://[fd00::5]", None, None).unwrap().port,
            1883
        );
        assert!(Broker::new("mqtt://::1:1883", None, None).is_err());
        assert!(Broker::new("mqtt://[::1", None, None).is_err());
    }

    #[test]
    fn topics_and_status_topic_reading() {
        let t = Topics::new("neoflix", "room-1");
        assert_eq!(t.status, "neoflix/room-1/status");
        assert_eq!(t.reply, "neoflix/room-1/reply");
        assert_eq!(device_of_status("neoflix", &t.status), Some("room-1"));
        assert_eq!(device_of_status("neoflix", "neoflix/a/b/status"), None);
        assert_eq!(device_of_status("neoflix", "other/a/status"), None);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(30));
        let d: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(500) && d[0] <= Duration::from_secs(1));
        assert!(d[7] >= Duration::from_secs(15) && d[7] <= Duration::from_secs(30));
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }

    #[test]
    fn discovery_points_at_the_device_topics() {
        let t = Topics::new("neoflix", "room-1");
        let d = home_assistant_discovery("homeassistant", &t, "room-1", "0.1.0");
        assert_eq!(d.len(), 3);
        assert_eq!(d[2].0, "homeassistant/button/neoflix_room-1/start/config");
        let button: serde_json::Value = serde_json::from_str(&d[2].1).unwrap();
        assert_eq!(button["command_topic"], "neoflix/room-1/cmd");
        let cmd = button["payload_press"].as_str().unwrap();
        assert_eq!(
            parse_command(cmd.as_bytes(), "room-1").unwrap().action,
            Action::Start
        );
    }
}
