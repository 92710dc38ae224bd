//! The fleet link: status, events and commands over MQTT (topics in `docs/mqtt.md`).
//!
//! Three tasks, so that nothing waits on the broker and the broker never waits on us:
//! - the **poll** task only drives rumqttc's event loop (reconnecting with jittered back-off) and
//!   hands incoming commands to a bounded queue;
//! - the **publisher** publishes the retained status (read from the published status, a watch)
//!   when it changes in substance and every `status_interval`, events as they come, and
//!   re-announces (status, subscription, discovery) on every (re)connection;
//! - the **commander** carries commands out through the conductor's inbox, like `neoflix ctl`,
//!   and answers each on the reply topic.
//!
//! Status and events use `try_publish`: when the broker is away, rumqttc's bounded request queue
//! fills and further messages are dropped (the retained status is re-sent on reconnect), so
//! capture and recording never wait for the network. Replies to commands carried out wait for
//! room in that queue instead (only the commander waits, not the recorder).

use std::time::Duration;

use neoflix_mqtt::{
    Action, Backoff, Broker, Command as MqttCommand, CommandError, CommandReply, OFFLINE, Topics,
};
use neoflix_recorder::Trigger;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet};
use rumqttc::v5::{AsyncClient, Event};
use tokio::sync::{mpsc, oneshot, watch};

use crate::conductor::{Command, Input};
use crate::status::{Published, Summary};

/// What the fleet link needs.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// The broker.
    pub broker: Broker,
    /// This device.
    pub device: String,
    /// Its topics.
    pub topics: Topics,
    /// The status is re-published at least this often.
    pub status_interval: Duration,
    /// Home Assistant discovery prefix, when discovery is on.
    pub discovery_prefix: Option<String>,
}

/// Has the conductor carry out a command, as a local `neoflix ctl` would. `None` when the
/// conductor is gone.
async fn ask(inbox: &mpsc::Sender<Input>, command: Command) -> Option<neoflix_control::Reply> {
    let (reply, rx) = oneshot::channel();
    inbox
        .send(Input::Command {
            command,
            by: Trigger::Mqtt,
            reply,
        })
        .await
        .ok()?;
    rx.await.ok()
}

fn now_utc() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Runs the fleet link until `stop`, then says goodbye (`offline`, retained) and disconnects.
pub async fn run(
    s: FleetSettings,
    inbox: mpsc::Sender<Input>,
    status: watch::Receiver<Published>,
    events: mpsc::Receiver<neoflix_mqtt::Event>,
    stop: watch::Receiver<bool>,
) -> Result<(), neoflix_mqtt::BrokerError> {
    let mut opts = s.broker.options(&format!("neoflixd-{}", s.device))?;
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_clean_start(true);
    opts.set_last_will(LastWill::new(
        &s.topics.status,
        OFFLINE,
        QoS::AtLeastOnce,
        true,
        None,
    ));
    let (client, eventloop) = AsyncClient::new(opts, 64);
    let (connected_tx, connected_rx) = watch::channel(0u64);
    let (cmd_tx, cmd_rx) = mpsc::channel::<Incoming>(16);
    let (done_tx, done_rx) = watch::channel(false);

    let poller = tokio::spawn(poll(
        eventloop,
        s.clone(),
        connected_tx,
        cmd_tx,
        client.clone(),
        done_rx,
    ));
    let commander = tokio::spawn(commander(
        s.clone(),
        client.clone(),
        inbox.clone(),
        cmd_rx,
        stop.clone(),
    ));
    publisher(s, client, status, events, connected_rx, stop).await;
    let _ = commander.await;
    // Give the goodbye a moment to reach the broker, then end the event loop.
    let mut poller = poller;
    if tokio::time::timeout(Duration::from_secs(2), &mut poller)
        .await
        .is_err()
    {
        let _ = done_tx.send(true);
        let _ = poller.await;
    }
    Ok(())
}

/// A command as it came off the broker: parsed, or why not (with the `request_id` it carried,
/// when readable).
type Incoming = Result<MqttCommand, (Option<String>, CommandError)>;

/// Commands other than `start`, `stop` and `privacy` are carried out at most this many a second
/// on average, in bursts of [`BURST`]: a flood of pings or marks from a misbehaving publisher
/// cannot keep the room's own `start` from its turn, nor fill the journal with markers.
const PER_SEC: f64 = 10.0;
/// See [`PER_SEC`].
const BURST: f64 = 20.0;

/// A token bucket: [`PER_SEC`] commands a second, [`BURST`] at once.
#[derive(Debug)]
struct Rate {
    tokens: f64,
    last: std::time::Instant,
}

impl Rate {
    fn new(now: std::time::Instant) -> Rate {
        Rate {
            tokens: BURST,
            last: now,
        }
    }

    /// Takes a token if there is one.
    fn allow(&mut self, now: std::time::Instant) -> bool {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * PER_SEC;
        self.tokens = (self.tokens + refill).min(BURST);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Messages refused or ignored, logged on their own only the first of each kind in a window: a
/// flood is summed up once per [`Flood::WINDOW`] instead of a line a message.
#[derive(Debug, Default)]
struct Flood {
    since: Option<std::time::Instant>,
    counts: std::collections::BTreeMap<&'static str, u64>,
}

impl Flood {
    const WINDOW: Duration = Duration::from_secs(10);

    /// Counts one message refused for `why`; true when it is to be logged on its own (the
    /// first of its kind in the window).
    fn note(&mut self, now: std::time::Instant, why: &'static str) -> bool {
        self.since.get_or_insert(now);
        let n = self.counts.entry(why).or_default();
        *n += 1;
        *n == 1
    }

    /// Once the window has passed: what was refused in it after the first, if anything.
    fn summary(&mut self, now: std::time::Instant) -> Option<String> {
        let since = self.since?;
        if now.saturating_duration_since(since) < Self::WINDOW {
            return None;
        }
        // Only kinds that came more than once: a single one was logged on its own.
        let parts: Vec<String> = self
            .counts
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(why, n)| format!("{n} {why}"))
            .collect();
        self.since = None;
        self.counts.clear();
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

/// Drives the event loop: the only place that awaits the network.
async fn poll(
    mut eventloop: rumqttc::v5::EventLoop,
    s: FleetSettings,
    connected: watch::Sender<u64>,
    commands: mpsc::Sender<Incoming>,
    client: AsyncClient,
    mut done: watch::Receiver<bool>,
) {
    let mut rate = Rate::new(std::time::Instant::now());
    let mut flood = Flood::default();
    let device = s.device.as_str();
    let summarize = |flood: &mut Flood| {
        if let Some(summary) = flood.summary(std::time::Instant::now()) {
            log::warn!(device = device; "MQTT messages ignored in the last {} s: {summary}", Flood::WINDOW.as_secs());
        }
    };
    let refuse = |flood: &mut Flood, why: &'static str, reply: Option<(Option<String>, String)>| {
        if flood.note(std::time::Instant::now(), why) {
            log::warn!(device = device; "MQTT message ignored: {why}");
        }
        summarize(flood);
        if let Some((request_id, error)) = reply {
            let reply = CommandReply {
                request_id,
                cmd: None,
                ok: false,
                error: Some(error),
                recording: None,
            };
            let _ = client.try_publish(
                &s.topics.reply,
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&reply).unwrap_or_default(),
            );
        }
    };
    let mut backoff = Backoff::new(Duration::from_secs(30));
    let mut up = false;
    let mut first_failure = true;
    let mut generation = 0;
    loop {
        let ev = tokio::select! {
            ev = eventloop.poll() => ev,
            _ = done.changed() => return,
        };
        // A flood that has ended is summed up too (the keep-alive brings an event at least
        // every 10 s).
        summarize(&mut flood);
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.connected(std::time::Instant::now());
                up = true;
                first_failure = true;
                generation += 1;
                log::info!(device = s.device.as_str(), broker = format!("{}:{}", s.broker.host, s.broker.port).as_str(); "connected to the MQTT broker");
                connected.send_replace(generation);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if p.topic != s.topics.cmd.as_bytes() {
                    refuse(&mut flood, "on a topic this device does not serve", None);
                    continue;
                }
                if p.retain {
                    // A retained command would run again at every reconnection.
                    refuse(
                        &mut flood,
                        "retained commands (commands must not be retained)",
                        None,
                    );
                    continue;
                }
                if p.payload.len() > neoflix_mqtt::MAX_COMMAND_BYTES {
                    refuse(&mut flood, "commands over 4 KiB", None);
                    continue;
                }
                let incoming = match neoflix_mqtt::parse_command(&p.payload, &s.device) {
                    Ok(cmd) => Ok(cmd),
                    Err(CommandError::WrongDevice(_)) => {
                        refuse(&mut flood, "commands for another device", None);
                        continue;
                    }
                    Err(e) => Err((CommandError::request_id_of(&p.payload), e)),
                };
                // The room's own start, stop and privacy always have their turn; the rest
                // (and what does not parse) share the rate.
                let essential = matches!(
                    &incoming,
                    Ok(MqttCommand {
                        action: Action::Start | Action::Stop | Action::Privacy { .. },
                        ..
                    })
                );
                if !essential && !rate.allow(std::time::Instant::now()) {
                    let request_id = match &incoming {
                        Ok(c) => c.request_id.clone(),
                        Err((id, _)) => id.clone(),
                    };
                    let error = format!(
                        "busy: more than {PER_SEC} commands a second, try again (start, stop and privacy are never held back)"
                    );
                    refuse(
                        &mut flood,
                        "over the command rate",
                        incoming.is_ok().then_some((request_id, error)),
                    );
                    continue;
                }
                let request_id = match &incoming {
                    Ok(c) => c.request_id.clone(),
                    Err((id, _)) => id.clone(),
                };
                if let Err(e) = commands.try_send(incoming) {
                    if matches!(e, mpsc::error::TrySendError::Closed(_)) {
                        // Not "busy": nothing will ever carry it out. Say so where IT looks.
                        log::error!(device = device; "MQTT command handler has stopped: commands cannot be carried out until neoflixd restarts");
                        refuse(
                            &mut flood,
                            "commands while the handler is stopped",
                            Some((
                                request_id,
                                "command handler stopped: restart neoflixd (see its journal)"
                                    .into(),
                            )),
                        );
                    } else {
                        refuse(
                            &mut flood,
                            "commands while 16 wait (busy)",
                            Some((
                                request_id,
                                "busy: too many commands at once, try again".into(),
                            )),
                        );
                    }
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                // Our own goodbye is on its way; one more poll sends it.
                let _ = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let wait = backoff.failed(std::time::Instant::now());
                if up || first_failure {
                    log::warn!(device = s.device.as_str(), retry_ms = wait.as_millis() as u64; "MQTT broker unreachable: {e}; recording is unaffected, retrying");
                    first_failure = false;
                } else {
                    log::debug!(device = s.device.as_str(); "MQTT: {e}");
                }
                up = false;
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = done.changed() => return,
                }
            }
        }
    }
}

/// Publishes status and events; re-announces on every connection.
async fn publisher(
    s: FleetSettings,
    client: AsyncClient,
    mut status: watch::Receiver<Published>,
    mut events: mpsc::Receiver<neoflix_mqtt::Event>,
    mut connected: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(s.status_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut events_open = true;
    let mut status_open = true;
    // What the last status published said; a new one goes out when it says something else.
    let mut published: Option<Summary> = None;
    let publish_status = |client: &AsyncClient, json: Vec<u8>| {
        if let Err(e) = client.try_publish(&s.topics.status, QoS::AtLeastOnce, true, json) {
            log::debug!("MQTT status not queued: {e}");
        }
    };
    loop {
        // Biased, events before the goodbye: the recording finalized at shutdown is reported.
        // `announce`: a (re)connection; `due`: the status goes out whether it changed or not.
        let (announce, due) = tokio::select! {
            biased;
            r = connected.changed() => { if r.is_err() { return; } (true, true) }
            ev = events.recv(), if events_open => {
                let Some(ev) = ev else { events_open = false; continue };
                let msg = neoflix_mqtt::Published { device: s.device.clone(), time_utc: now_utc(), event: ev };
                if let Err(e) = client.try_publish(&s.topics.event, QoS::AtLeastOnce, false, serde_json::to_vec(&msg).unwrap_or_default()) {
                    log::debug!("MQTT event not queued: {e}");
                }
                continue;
            }
            r = status.changed(), if status_open => { status_open = r.is_ok(); (false, false) }
            _ = every.tick() => (false, true),
            _ = stop.changed() => {
                let _ = client.try_publish(&s.topics.status, QoS::AtLeastOnce, true, OFFLINE);
                let _ = client.try_disconnect();
                return;
            }
        };
        if announce {
            if let Err(e) = client.try_subscribe(&s.topics.cmd, QoS::AtLeastOnce) {
                log::warn!("MQTT: cannot subscribe to {}: {e}", s.topics.cmd);
            }
            if let Some(prefix) = &s.discovery_prefix {
                for (topic, payload) in neoflix_mqtt::home_assistant_discovery(
                    prefix,
                    &s.topics,
                    &s.device,
                    env!("CARGO_PKG_VERSION"),
                ) {
                    let _ = client.try_publish(topic, QoS::AtLeastOnce, true, payload);
                }
            }
        }
        let st = status.borrow_and_update().status.clone();
        let summary = Summary::of(&st);
        if due || published.as_ref() != Some(&summary) {
            publish_status(&client, serde_json::to_vec(&st).unwrap_or_default());
            published = Some(summary);
        }
    }
}

/// Carries out commands, one at a time, and answers each.
async fn commander(
    s: FleetSettings,
    client: AsyncClient,
    inbox: mpsc::Sender<Input>,
    mut commands: mpsc::Receiver<Incoming>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let incoming = tokio::select! {
            p = commands.recv() => match p { Some(p) => p, None => return },
            _ = stop.changed() => return,
        };
        let reply = match incoming {
            Err((request_id, e)) => {
                // Already rate-limited on the way in; the reply says what was wrong.
                log::debug!(device = s.device.as_str(); "MQTT command refused: {e}");
                CommandReply {
                    request_id,
                    cmd: None,
                    ok: false,
                    error: Some(e.to_string()),
                    recording: None,
                }
            }
            Ok(cmd) => {
                let name = cmd.action.name();
                let command = match cmd.action {
                    Action::Start => Some(Command::Start),
                    Action::Stop => Some(Command::Stop),
                    Action::Mark { label } => Some(Command::Mark { label }),
                    Action::Privacy { on } => Some(Command::Privacy { on }),
                    Action::Ping => None,
                };
                let answer = match command {
                    None => Some(neoflix_control::Reply::ok()),
                    Some(command) => tokio::select! {
                        r = ask(&inbox, command) => r,
                        _ = stop.changed() => return,
                    },
                };
                let answer =
                    answer.unwrap_or_else(|| neoflix_control::Reply::error("neoflixd is stopping"));
                // What changes the room is logged; pings only when debugging.
                let level = if name == "ping" {
                    log::Level::Debug
                } else {
                    log::Level::Info
                };
                log::log!(level, device = s.device.as_str(), cmd = name, ok = answer.ok,
                    request_id = cmd.request_id.as_deref().unwrap_or(""); "MQTT command");
                CommandReply {
                    request_id: cmd.request_id,
                    cmd: Some(name.into()),
                    ok: answer.ok,
                    error: answer.error,
                    recording: answer.recording,
                }
            }
        };
        // Waits for room in the client's queue rather than dropping the reply: the sender of
        // a `start` must hear its recording's id. Meanwhile commands wait in their own queue,
        // and past it are answered busy.
        let publish = client.publish(
            &s.topics.reply,
            QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&reply).unwrap_or_default(),
        );
        tokio::select! {
            r = publish => if let Err(e) = r {
                log::warn!("MQTT reply not queued: {e}");
            },
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn the_rate_allows_a_burst_then_its_average() {
        let t0 = Instant::now();
        let mut r = Rate::new(t0);
        let burst = (0..100).filter(|_| r.allow(t0)).count();
        assert_eq!(burst, BURST as usize);
        // Over the next 10 s, PER_SEC a second: 100, not the 1000 that were sent.
        let mut allowed = 0;
        for ms in (0..10_000).step_by(10) {
            if r.allow(t0 + Duration::from_millis(ms + 10)) {
                allowed += 1;
            }
        }
        // (Less one, where the float sum of the refills falls a hair short.)
        assert!((99..=100).contains(&allowed), "{allowed}");
    }

    #[test]
    fn a_flood_is_logged_once_a_kind_and_summed_up_once_a_window() {
        let t0 = Instant::now();
        let mut f = Flood::default();
        assert!(f.note(t0, "over the command rate"));
        assert!(!f.note(t0, "over the command rate"));
        assert!(f.note(t0, "retained commands"));
        for _ in 0..998 {
            f.note(t0 + Duration::from_secs(1), "over the command rate");
        }
        assert_eq!(f.summary(t0 + Duration::from_secs(9)), None);
        assert_eq!(
            f.summary(t0 + Duration::from_secs(10)).as_deref(),
            Some("1000 over the command rate")
        );
        // A new window: the first of a kind is logged again, and nothing is left to sum up.
        assert!(f.note(t0 + Duration::from_secs(11), "over the command rate"));
        assert_eq!(f.summary(t0 + Duration::from_secs(30)), None);
    }
}
