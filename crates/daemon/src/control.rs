//! The Unix control socket: JSON lines, see `docs/control.md`.
//!
//! `status` is answered from the published status (a watch, [`crate::status`]); the other
//! requests are commands, carried out by the conductor through its inbox.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use neoflix_control::{MAX_LINE, Reply, State, parse_request};
use neoflix_recorder::{Phase, Trigger};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::DaemonError;
use crate::conductor::{Command, Input};
use crate::status::Published;

/// Clients served at once; more wait for a place.
const MAX_CLIENTS: usize = 8;
/// Connections held at once, served or waiting for a place; past that a connection is answered
/// "busy" and closed at once, so a flood of connections costs a bounded amount of memory.
const MAX_CONNECTIONS: usize = 64;
/// How long a connection may sit without sending a whole request (or reading its reply), and how
/// long one waits for a place. `neoflix ctl` waits 30 s, so idle clients are gone well before a
/// real one gives up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection keeps its place, however busy: a client polling every few seconds
/// on a kept-open connection must not hold a place for ever. It may reconnect.
const MAX_LIFETIME: Duration = Duration::from_secs(60);

/// The recorder's phase as the protocol names it: the two enums are kept apart so that the
/// recorder stays free of the wire format, and this match makes a new phase a compile error here.
pub fn wire_state(phase: Phase) -> State {
    match phase {
        Phase::Starting => State::Starting,
        Phase::Buffering => State::Buffering,
        Phase::Ready => State::Ready,
        Phase::Recording => State::Recording,
        Phase::Privacy => State::Privacy,
        Phase::Fault => State::Fault,
    }
}

/// Binds the socket (replacing a stale one) with mode 0660.
pub fn bind(path: &Path) -> Result<UnixListener, DaemonError> {
    let err = |source| DaemonError::Control {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    Ok(listener)
}

/// Serves clients until `stop` turns true.
pub async fn serve(
    listener: UnixListener,
    inbox: mpsc::Sender<Input>,
    status: watch::Receiver<Published>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    let held = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // The accept loop never waits: waiting for a place happens in the
                    // connection's own task, bounded in time and in number.
                    let Ok(connection) = held.clone().try_acquire_owned() else {
                        log::warn!(limit = MAX_CONNECTIONS; "control socket: too many connections, one refused");
                        let _ = stream.try_write(&reply_line(&busy()));
                        continue;
                    };
                    let (slots, inbox, status, mut stop) =
                        (slots.clone(), inbox.clone(), status.clone(), stop.clone());
                    tokio::spawn(async move {
                        let place = tokio::select! {
                            _ = stop.changed() => return,
                            p = tokio::time::timeout(IDLE_TIMEOUT, slots.acquire_owned()) => p,
                        };
                        match place {
                            Ok(Ok(_place)) => client(stream, inbox, status, stop).await,
                            _ => {
                                let _ = stream.try_write(&reply_line(&busy()));
                            }
                        }
                        drop(connection);
                    });
                }
                Err(e) => {
                    log::warn!("control socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

fn busy() -> Reply {
    Reply::error(format!(
        "busy: {MAX_CLIENTS} clients are being served; try again"
    ))
}

fn reply_line(reply: &Reply) -> Vec<u8> {
    let mut out = serde_json::to_vec(reply).expect("replies serialize");
    out.push(b'\n');
    out
}

async fn client(
    stream: UnixStream,
    inbox: mpsc::Sender<Input>,
    status: watch::Receiver<Published>,
    mut stop: watch::Receiver<bool>,
) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    let opened = tokio::time::Instant::now();
    while opened.elapsed() < MAX_LIFETIME {
        line.clear();
        let mut limited = (&mut reader).take(MAX_LINE as u64 + 1);
        let n = tokio::select! {
            _ = stop.changed() => return,
            n = tokio::time::timeout(IDLE_TIMEOUT, limited.read_until(b'\n', &mut line)) => match n {
                Ok(Ok(n)) => n,
                // An I/O error, or idle too long: the place goes to someone else.
                _ => return,
            },
        };
        if n == 0 {
            return;
        }
        let too_long = line.len() > MAX_LINE;
        let reply = match parse_request(&line).map(Command::of) {
            Err(refusal) => Reply::error(refusal),
            Ok(None) => Reply {
                status: Some(status.borrow().status.clone()),
                ..Reply::ok()
            },
            Ok(Some(command)) => {
                let (reply, rx) = oneshot::channel();
                let input = Input::Command {
                    command,
                    by: Trigger::Control,
                    reply,
                };
                if inbox.send(input).await.is_err() {
                    Reply::error("neoflixd is shutting down")
                } else {
                    rx.await
                        .unwrap_or_else(|_| Reply::error("neoflixd is shutting down"))
                }
            }
        };
        let sent = tokio::time::timeout(IDLE_TIMEOUT, write.write_all(&reply_line(&reply))).await;
        if !matches!(sent, Ok(Ok(()))) || too_long {
            return;
        }
    }
}
