//! `neoflix fleet`: every room box's retained status from the department broker, as a table that
//! refreshes in place, or once as JSON for scripts.
//!
//! [`Fleet`] is the view, without I/O, shared with the department server's fleet tiles (it lives
//! in `neoflix_mqtt::fleet`). [`run`] is the MQTT loop around it.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use neoflix_control::State;
// Text from outside (broker errors) is printed with control characters escaped.
use neoflix_logging::escape_controls as printable;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{Client, Event};
use thiserror::Error;
use time::OffsetDateTime;

/// `neoflix fleet`'s options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The broker: `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]`.
    #[arg(long)]
    pub broker: String,
    /// CA certificate of the broker (mqtts).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Client certificate (mutual TLS).
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Client key (mutual TLS).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Topic prefix.
    #[arg(long, default_value = "neoflix")]
    pub prefix: String,
    /// Print once and exit.
    #[arg(long)]
    pub once: bool,
    /// With --once: a JSON array, one object per device.
    #[arg(long, requires = "once")]
    pub json: bool,
}

/// Why the fleet view stopped.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FleetError {
    /// `--prefix` cannot name the status topics (it holds a wildcard, or starts or ends with
    /// `/`).
    #[error("--prefix: {0}")]
    Prefix(String),
    /// The broker URL or its TLS files are unusable: typically a typo in `--broker`, or a
    /// certificate or key file that is missing or not PEM.
    #[error(transparent)]
    Broker(#[from] neoflix_mqtt::BrokerError),
    /// With `--once`: the broker could not be reached (wrong host or port, TLS refused).
    #[error("cannot reach the broker {broker}: {source}")]
    Unreachable {
        /// The broker URL.
        broker: String,
        /// What the connection attempt said (boxed: it is large, and this error is rare).
        source: Box<rumqttc::v5::ConnectionError>,
    },
    /// With `--once`: the broker accepted the connection but never acknowledged the
    /// subscription, typically because its ACL denies this client the status topics.
    #[error("the broker {broker} did not answer the subscription (may this client read {filter}?)")]
    NoSubscription {
        /// The broker URL.
        broker: String,
        /// The topic filter subscribed to.
        filter: String,
    },
    /// The subscription could not be queued: the MQTT client stopped.
    #[error("subscribing: {0}")]
    Subscribe(Box<rumqttc::v5::ClientError>),
    /// The MQTT client's connection ended for good.
    #[error("MQTT connection closed")]
    Closed,
    /// Writing the output failed (a closed pipe, a full disk).
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

impl From<rumqttc::v5::ClientError> for FleetError {
    fn from(e: rumqttc::v5::ClientError) -> Self {
        // Boxed: it holds the whole request, and this error is rare.
        FleetError::Subscribe(Box::new(e))
    }
}

pub use neoflix_mqtt::fleet::{Fleet, Retained, Row, STALE_SECS, age_secs};

/// The live view's first line: the broker, how many devices and recording, and the broker's
/// last error while it is unreachable.
fn header(broker: &str, fleet: &Fleet, last_error: Option<&str>) -> String {
    format!(
        "neoflix fleet: {broker} ({} devices, {} recording){}\n",
        fleet.len(),
        fleet.count(State::Recording),
        last_error
            .map(|e| format!(" - broker unreachable: {}", printable(e)))
            .unwrap_or_default()
    )
}

/// Subscribes to every status under `--prefix` and shows them: live, refreshed in place on a
/// terminal, until interrupted; or, with `--once`, once every retained status is in.
pub fn run(a: Args) -> Result<(), FleetError> {
    neoflix_config::check_topic_prefix(&a.prefix).map_err(FleetError::Prefix)?;
    let identity = a.cert.zip(a.key);
    let broker = neoflix_mqtt::Broker::new(&a.broker, a.ca, identity)?;
    let mut opts = broker.options(&format!("neoflix-fleet-{}", std::process::id()))?;
    opts.set_keep_alive(Duration::from_secs(10));
    let (client, mut conn) = Client::new(opts, 16);
    let filter = neoflix_mqtt::all_status(&a.prefix);
    let mut fleet = Fleet::default();
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
                client.try_subscribe(filter.clone(), QoS::AtLeastOnce)?;
            }
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                subscribed.get_or_insert_with(Instant::now);
                dirty = true;
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                if let Ok(topic) = std::str::from_utf8(&p.topic)
                    && let Some(device) = neoflix_mqtt::device_of_status(&a.prefix, topic)
                {
                    fleet.update(device, &p.payload);
                    last_message = Instant::now();
                    dirty = true;
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(source)) => {
                if a.once {
                    return Err(FleetError::Unreachable {
                        broker: a.broker,
                        source: Box::new(source),
                    });
                }
                last_error = Some(source.to_string());
                dirty = true;
                // rumqttc reconnects at once on the next poll: pace it.
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(rumqttc::v5::RecvTimeoutError::Timeout) => {}
            Err(rumqttc::v5::RecvTimeoutError::Disconnected) => return Err(FleetError::Closed),
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
                return Err(FleetError::NoSubscription {
                    broker: a.broker,
                    filter,
                });
            }
            continue;
        }
        if dirty && drawn.elapsed() >= Duration::from_millis(250)
            || drawn.elapsed() >= Duration::from_secs(1)
        {
            let mut out = std::io::stdout().lock();
            if live_terminal {
                // Home and clear: refresh in place.
                write!(out, "\x1b[H\x1b[2J")?;
            }
            let now = OffsetDateTime::now_utc();
            write!(
                out,
                "{}{}",
                header(&a.broker, &fleet, last_error.as_deref()),
                fleet.table(now)
            )?;
            out.flush()?;
            drawn = Instant::now();
            dirty = false;
        }
    }
    let _ = client.try_disconnect();
    let now = OffsetDateTime::now_utc();
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", fleet.json(now))?;
    } else {
        write!(out, "{}", fleet.table(now))?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_names_the_broker_counts_and_escapes_its_error() {
        let mut f = Fleet::default();
        f.update("room-1", neoflix_mqtt::OFFLINE.as_bytes());
        assert_eq!(
            header("mqtt://b", &f, Some("refused\n")),
            "neoflix fleet: mqtt://b (1 devices, 0 recording) - broker unreachable: refused\\n\n"
        );
    }
}
