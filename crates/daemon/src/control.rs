//! The Unix control socket: JSON lines, see `docs/control.md`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use neoflix_control::{Reply, Request};
use neoflix_recorder::Trigger;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::DaemonError;
use crate::engine::Input;

/// Longest request line accepted; anything longer is not a control request.
const MAX_LINE: usize = 4096;
/// Clients served at once; more wait for a place.
const MAX_CLIENTS: usize = 8;

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
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(permit) = slots.clone().acquire_owned().await else { break };
                    let inbox = inbox.clone();
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        client(stream, inbox, stop).await;
                        drop(permit);
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

async fn client(stream: UnixStream, inbox: mpsc::Sender<Input>, mut stop: watch::Receiver<bool>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        let mut limited = (&mut reader).take(MAX_LINE as u64 + 1);
        let n = tokio::select! {
            _ = stop.changed() => return,
            n = limited.read_line(&mut line) => match n { Ok(n) => n, Err(_) => return },
        };
        if n == 0 {
            return;
        }
        let too_long = line.len() > MAX_LINE;
        let reply = if too_long {
            Reply::error(format!("request longer than {MAX_LINE} bytes"))
        } else {
            match serde_json::from_str::<Request>(line.trim()) {
                Err(e) => Reply::error(format!(
                    "not a control request ({e}); send one JSON object per line, e.g. {{\"cmd\":\"status\"}}"
                )),
                Ok(req) => {
                    let (tx, rx) = oneshot::channel();
                    if inbox
                        .send(Input::Request(req, Trigger::Control, tx))
                        .await
                        .is_err()
                    {
                        Reply::error("neoflixd is shutting down")
                    } else {
                        rx.await
                            .unwrap_or_else(|_| Reply::error("neoflixd is shutting down"))
                    }
                }
            }
        };
        let mut out = serde_json::to_vec(&reply).expect("replies serialize");
        out.push(b'\n');
        if write.write_all(&out).await.is_err() || too_long {
            return;
        }
    }
}
