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
//! Publishing uses `try_publish`: when the broker is away, rumqttc's bounded request queue fills
//! and further messages are dropped (the retained status is re-sent on reconnect), so capture and
//! recording never wait for the network.

use std::time::Duration;

use neoflix_mqtt::{Action, Backoff, Broker, CommandError, CommandReply, OFFLINE, Topics};
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
    let (cmd_tx, cmd_rx) = mpsc::channel::<Vec<u8>>(16);
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

/// A connection that lasted this long was a good one: the next failure is retried from the
/// shortest delay.
const STABLE: Duration = Duration::from_secs(30);

/// Drives the event loop: the only place that awaits the network.
async fn poll(
    mut eventloop: rumqttc::v5::EventLoop,
    s: FleetSettings,
    connected: watch::Sender<u64>,
    commands: mpsc::Sender<Vec<u8>>,
    client: AsyncClient,
    mut done: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_secs(30));
    // When the connection came up: the back-off starts over only after a connection that
    // lasted, so one the broker (or something between) ends at once is not retried in a
    // tight loop.
    let mut up_since = std::time::Instant::now();
    let mut up = false;
    let mut first_failure = true;
    let mut generation = 0;
    loop {
        let ev = tokio::select! {
            ev = eventloop.poll() => ev,
            _ = done.changed() => return,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                up_since = std::time::Instant::now();
                up = true;
                first_failure = true;
                generation += 1;
                log::info!(device = s.device.as_str(), broker = format!("{}:{}", s.broker.host, s.broker.port).as_str(); "connected to the MQTT broker");
                connected.send_replace(generation);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if p.topic != s.topics.cmd.as_bytes() {
                    let topic = String::from_utf8_lossy(&p.topic);
                    log::warn!(device = s.device.as_str(), topic = &*neoflix_logging::escape_controls(&topic); "MQTT message on a topic this device does not serve: ignored");
                } else if p.retain {
                    // A retained command would run again at every reconnection.
                    log::warn!(device = s.device.as_str(); "retained MQTT command ignored: commands must not be retained");
                } else if p.payload.len() > neoflix_mqtt::MAX_COMMAND_BYTES {
                    log::warn!(device = s.device.as_str(), bytes = p.payload.len(); "oversized MQTT command ignored");
                } else if let Err(e) = commands.try_send(p.payload.to_vec()) {
                    let error = if matches!(e, mpsc::error::TrySendError::Closed(_)) {
                        // Not "busy": nothing will ever carry it out. Say so where IT looks.
                        log::error!(device = s.device.as_str(); "MQTT command handler has stopped: commands cannot be carried out until neoflixd restarts");
                        "command handler stopped: restart neoflixd (see its journal)"
                    } else {
                        log::warn!(device = s.device.as_str(); "MQTT commands arrive faster than they can be carried out: one dropped");
                        "busy: too many commands at once, try again"
                    };
                    let reply = CommandReply {
                        request_id: CommandError::request_id_of(&p.payload),
                        cmd: None,
                        ok: false,
                        error: Some(error.into()),
                        recording: None,
                    };
                    let _ = client.try_publish(
                        &s.topics.reply,
                        QoS::AtLeastOnce,
                        false,
                        serde_json::to_vec(&reply).unwrap_or_default(),
                    );
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                // Our own goodbye is on its way; one more poll sends it.
                let _ = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
                return;
            }
            Ok(_) => {}
            Err(e) => {
                if up && up_since.elapsed() >= STABLE {
                    backoff.reset();
                }
                let wait = backoff.next_delay();
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
    mut commands: mpsc::Receiver<Vec<u8>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let payload = tokio::select! {
            p = commands.recv() => match p { Some(p) => p, None => return },
            _ = stop.changed() => return,
        };
        let request_id = CommandError::request_id_of(&payload);
        let reply = match neoflix_mqtt::parse_command(&payload, &s.device) {
            Err(CommandError::WrongDevice(other)) => {
                log::warn!(device = s.device.as_str(), addressed_to = other.as_str(); "MQTT command for another device ignored");
                continue;
            }
            Err(e) => {
                log::warn!(device = s.device.as_str(); "MQTT command refused: {e}");
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
                log::info!(device = s.device.as_str(), cmd = name, ok = answer.ok,
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
        if let Err(e) = client.try_publish(
            &s.topics.reply,
            QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&reply).unwrap_or_default(),
        ) {
            log::warn!("MQTT reply not queued: {e}");
        }
    }
}
