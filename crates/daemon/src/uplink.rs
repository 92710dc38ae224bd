//! The uplink: pushes sealed recordings to the department's ingest server over mutual TLS.
//!
//! It works from what is on disk and what the server says it has, never from memory alone, so
//! it resumes after a restart of either side: each pass lists the recordings directory, asks the
//! server (`GET /v1/recordings/{id}`) what it holds of each recording it does not know yet, PUTs
//! the objects the server lacks (bounded concurrency, each PUT idempotent), and once a recording
//! has its manifest and every object is on the server, PUTs the manifest, checks the receipt
//! against the local manifest and only then deletes the local copy. The engine wakes it after
//! every claimed fragment, so a recording is on the server about one fragment after it stops.
//! Failures back off exponentially with jitter (1 s to 60 s).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use tokio::sync::{Notify, Semaphore, watch};

/// PUTs in flight at once.
const CONCURRENCY: usize = 8;

/// Where and how to upload.
#[derive(Debug, Clone)]
pub struct UplinkSettings {
    /// Base URL of the ingest server, e.g. `https://ingest.example:8443`.
    pub url: String,
    /// CA certificate that issued the server's certificate (PEM).
    pub ca: PathBuf,
    /// This device's certificate (PEM).
    pub cert: PathBuf,
    /// This device's key (PEM).
    pub key: PathBuf,
    /// The recordings directory.
    pub recordings_dir: PathBuf,
}

/// The upload queue, as the status reports it.
#[derive(Debug, Clone, Default)]
pub struct UploadStatus {
    /// Recordings on the box not yet confirmed by the server.
    pub recordings_pending: usize,
    /// Sealed bytes on the box not yet on the server.
    pub bytes_pending: u64,
    /// When the last receipt was checked.
    pub last_success_utc: Option<String>,
    /// The last failure, until a pass succeeds.
    pub last_error: Option<String>,
    /// Recordings delivered since start.
    pub delivered: u64,
}

/// Why the uplink could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("upload: {0}")]
pub struct UplinkError(String);

/// Builds the HTTPS client with the device's certificate.
pub fn client(s: &UplinkSettings) -> Result<reqwest::Client, UplinkError> {
    let tls = neoflix_pki::client_tls(&s.ca, Some((&s.cert, &s.key)))
        .map_err(|e| UplinkError(format!("upload: {e}")))?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| UplinkError(e.to_string()))
}

#[derive(Deserialize)]
struct ServerStatus {
    complete: bool,
    objects: Vec<String>,
}

#[derive(Deserialize)]
struct Receipt {
    manifest_sha256: String,
    chain: String,
}

/// PUTs one object (idempotent: the server answers 200 for an identical one it has).
async fn put_object(
    client: reqwest::Client,
    base: String,
    dir: PathBuf,
    id: String,
    name: String,
) -> Result<(), String> {
    let bytes = tokio::fs::read(dir.join(&id).join(&name))
        .await
        .map_err(|e| format!("{id}/{name}: {e}"))?;
    let digest = base64::engine::general_purpose::STANDARD
        .encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    let r = client
        .put(format!("{base}/v1/recordings/{id}/objects/{name}"))
        .header("content-digest", format!("sha-256=:{digest}:"))
        .body(bytes)
        .send()
        .await
        .map_err(|e| format!("PUT {id}/{name}: {e}"))?;
    match r.status().as_u16() {
        200 | 201 => Ok(()),
        code => Err(format!(
            "PUT {id}/{name}: HTTP {code}: {}",
            r.text().await.unwrap_or_default().trim()
        )),
    }
}

/// One directory entry: name, is a directory, size.
type Entry = (String, bool, u64);

/// Lists a directory off the runtime: a long recording holds thousands of files.
async fn listing(dir: PathBuf) -> std::io::Result<Vec<Entry>> {
    tokio::task::spawn_blocking(move || {
        let mut v = Vec::new();
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let meta = e.metadata()?;
            v.push((
                e.file_name().to_string_lossy().to_string(),
                meta.is_dir(),
                meta.len(),
            ));
        }
        v.sort();
        Ok(v)
    })
    .await
    .map_err(std::io::Error::other)?
}

fn is_object(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".nfx") || name.ends_with(".key"))
}

/// What the uplink remembers between passes: objects the server confirmed, per recording.
type Known = HashMap<String, HashSet<String>>;

struct Pass<'a> {
    client: &'a reqwest::Client,
    base: String,
    dir: PathBuf,
    status: &'a Mutex<UploadStatus>,
    events: &'a crate::Events,
}

impl Pass<'_> {
    async fn server_has(&self, id: &str) -> Result<(HashSet<String>, bool), String> {
        let r = self
            .client
            .get(format!("{}/v1/recordings/{id}", self.base))
            .send()
            .await
            .map_err(|e| format!("GET {id}: {e}"))?;
        match r.status().as_u16() {
            404 => Ok((HashSet::new(), false)),
            200 => {
                let s: ServerStatus = r.json().await.map_err(|e| format!("GET {id}: {e}"))?;
                Ok((s.objects.into_iter().collect(), s.complete))
            }
            code => Err(format!(
                "GET {id}: HTTP {code}: {}",
                r.text().await.unwrap_or_default().trim()
            )),
        }
    }

    /// Delivers what it can of one recording; returns true when it was completed and removed.
    async fn recording(&self, id: &str, known: &mut Known) -> Result<bool, String> {
        let rdir = self.dir.join(id);
        let local: Vec<String> = listing(rdir.clone())
            .await
            .map_err(|e| format!("{}: {e}", rdir.display()))?
            .into_iter()
            .map(|(name, _, _)| name)
            .filter(|n| is_object(n))
            .collect();
        let manifest = tokio::fs::read(rdir.join("manifest.json")).await.ok();
        if !known.contains_key(id) {
            let (has, _complete) = self.server_has(id).await?;
            known.insert(id.to_string(), has);
        }
        let confirmed = known.get_mut(id).expect("inserted above");
        let missing: Vec<String> = local
            .iter()
            .filter(|n| !confirmed.contains(*n))
            .cloned()
            .collect();
        let slots = Arc::new(Semaphore::new(CONCURRENCY));
        let mut tasks = tokio::task::JoinSet::new();
        for name in missing {
            let permit = slots.clone().acquire_owned().await.expect("never closed");
            let put = put_object(
                self.client.clone(),
                self.base.clone(),
                self.dir.clone(),
                id.to_string(),
                name.clone(),
            );
            tasks.spawn(async move {
                let r = put.await;
                drop(permit);
                (name, r)
            });
        }
        let mut first_error = None;
        while let Some(done) = tasks.join_next().await {
            let (name, r) = done.map_err(|e| e.to_string())?;
            match r {
                Ok(_) => {
                    confirmed.insert(name);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            // What the server has may differ from what we think: ask again next time.
            known.remove(id);
            return Err(e);
        }
        let Some(manifest) = manifest else {
            return Ok(false);
        };
        let r = self
            .client
            .put(format!("{}/v1/recordings/{id}/manifest", self.base))
            .header("content-type", "application/json")
            .body(manifest.clone())
            .send()
            .await
            .map_err(|e| format!("PUT {id}/manifest: {e}"))?;
        let code = r.status().as_u16();
        if code != 200 && code != 201 {
            known.remove(id);
            return Err(format!(
                "PUT {id}/manifest: HTTP {code}: {}",
                r.text().await.unwrap_or_default().trim()
            ));
        }
        let receipt: Receipt = r
            .json()
            .await
            .map_err(|e| format!("{id}: unreadable receipt: {e}"))?;
        let local_manifest: neoflix_store::Manifest =
            serde_json::from_slice(&manifest).map_err(|e| format!("{id}: local manifest: {e}"))?;
        if receipt.manifest_sha256 != neoflix_seal::sha256_hex(&manifest)
            || receipt.chain != local_manifest.chain
        {
            return Err(format!(
                "{id}: the server's receipt does not match the local manifest; keeping the recording"
            ));
        }
        // Only now, with the receipt checked, does the local copy go.
        let rdir2 = rdir.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::remove_dir_all(&rdir2)?;
            if let Some(parent) = rdir2.parent() {
                std::fs::File::open(parent)?.sync_all()?;
            }
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{id}: delivered, but removing the local copy failed: {e}"))?;
        known.remove(id);
        log::info!(recording = id, fragments = local_manifest.fragments.len(); "recording delivered: receipt checked, local copy removed");
        self.events.send(neoflix_mqtt::Event::UploadDone {
            recording: id.to_string(),
        });
        let mut st = self.status.lock().expect("status lock");
        st.last_success_utc = Some(neoflix_store::utc(std::time::SystemTime::now()));
        st.delivered += 1;
        Ok(true)
    }

    /// One pass over every recording on the box.
    async fn run(&self, known: &mut Known) -> Result<(), String> {
        let ids: Vec<String> = match listing(self.dir.clone()).await {
            Ok(l) => l
                .into_iter()
                .filter(|(_, dir, _)| *dir)
                .map(|(name, _, _)| name)
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("{}: {e}", self.dir.display())),
        };
        known.retain(|id, _| ids.contains(id));
        let mut first_error = None;
        for id in &ids {
            if let Err(e) = self.recording(id, known).await {
                first_error.get_or_insert(e);
            }
        }
        self.update_queue(&ids, known).await;
        first_error.map_or(Ok(()), Err)
    }

    async fn update_queue(&self, ids: &[String], known: &Known) {
        let mut pending = 0;
        let mut bytes = 0;
        for id in ids {
            // Delivered recordings are gone from disk by now.
            let Ok(files) = listing(self.dir.join(id)).await else {
                continue;
            };
            pending += 1;
            let confirmed = known.get(id);
            bytes += files
                .iter()
                .filter(|(name, _, _)| {
                    is_object(name) && !confirmed.is_some_and(|c| c.contains(name))
                })
                .map(|(_, _, len)| len)
                .sum::<u64>();
        }
        let mut st = self.status.lock().expect("status lock");
        st.recordings_pending = pending;
        st.bytes_pending = bytes;
    }
}

fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    let f = 0.5 + (u16::from_le_bytes(b) as f64 / u16::MAX as f64);
    d.mul_f64(f)
}

/// Runs the uplink until `stop` turns true.
pub async fn run(
    settings: UplinkSettings,
    client: reqwest::Client,
    status: Arc<Mutex<UploadStatus>>,
    wake: Arc<Notify>,
    events: crate::Events,
    stop: watch::Receiver<bool>,
) {
    let (passes, _) = watch::channel(0);
    run_counting(settings, client, status, wake, events, passes, stop).await;
}

/// [`run`], counting passes in `passes`: after each, `status` holds the queue as it is now, for
/// whoever publishes it.
pub async fn run_counting(
    settings: UplinkSettings,
    client: reqwest::Client,
    status: Arc<Mutex<UploadStatus>>,
    wake: Arc<Notify>,
    events: crate::Events,
    passes: watch::Sender<u64>,
    stop: watch::Receiver<bool>,
) {
    let delivery = Delivery {
        client: &client,
        base: settings.url.trim_end_matches('/').to_string(),
        dir: settings.recordings_dir.clone(),
        status: &status,
        events: &events,
        known: Known::new(),
    };
    schedule(delivery, &status, &wake, jitter, &passes, stop).await;
}

/// One pass over the recordings, again and again.
trait Attempt {
    /// One pass; the error says what failed.
    fn attempt(&mut self) -> impl Future<Output = Result<(), String>> + Send;
}

/// The real passes, and what they remember in between.
struct Delivery<'a> {
    client: &'a reqwest::Client,
    base: String,
    dir: PathBuf,
    status: &'a Mutex<UploadStatus>,
    events: &'a crate::Events,
    known: Known,
}

impl Attempt for Delivery<'_> {
    async fn attempt(&mut self) -> Result<(), String> {
        let pass = Pass {
            client: self.client,
            base: self.base.clone(),
            dir: self.dir.clone(),
            status: self.status,
            events: self.events,
        };
        pass.run(&mut self.known).await
    }
}

/// When the next pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// After a failure: this long (before jitter), even if woken.
    Backoff(Duration),
    /// After a success: until woken, or this long at most.
    Idle(Duration),
}

/// The retry schedule: after a failure 1 s, doubling to 60 s; after a success the next pass when
/// the storage side wakes the uplink (a claim, a finalize) or 10 s later.
#[derive(Debug)]
struct Schedule {
    backoff: Duration,
}

impl Schedule {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(60);
    const IDLE: Duration = Duration::from_secs(10);

    fn after(&mut self, ok: bool) -> Wait {
        if ok {
            self.backoff = Self::FIRST;
            return Wait::Idle(Self::IDLE);
        }
        let wait = self.backoff;
        self.backoff = (wait * 2).min(Self::MAX);
        Wait::Backoff(wait)
    }
}

/// Runs passes as [`Schedule`] says until `stop`, keeping the status's last error and counting
/// passes in `done`.
async fn schedule(
    mut passes: impl Attempt,
    status: &Mutex<UploadStatus>,
    wake: &Notify,
    jitter: fn(Duration) -> Duration,
    done: &watch::Sender<u64>,
    mut stop: watch::Receiver<bool>,
) {
    let mut plan = Schedule {
        backoff: Schedule::FIRST,
    };
    loop {
        let result = tokio::select! {
            r = passes.attempt() => r,
            _ = stop.changed() => return,
        };
        let wait = plan.after(result.is_ok());
        match result {
            Ok(()) => status.lock().expect("status lock").last_error = None,
            Err(e) => {
                let retry_secs = match wait {
                    Wait::Backoff(d) | Wait::Idle(d) => d.as_secs(),
                };
                log::warn!(retry_secs = retry_secs; "upload: {e}; retrying (recordings stay on the box until the server confirms them)");
                status.lock().expect("status lock").last_error = Some(e);
            }
        }
        done.send_modify(|n| *n += 1);
        match wait {
            // After a failure, wait out the back-off even if woken.
            Wait::Backoff(d) => tokio::select! {
                _ = tokio::time::sleep(jitter(d)) => {}
                _ = stop.changed() => return,
            },
            Wait::Idle(d) => tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(d) => {}
                _ = stop.changed() => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    /// Passes that fail while `failing` says so, and when each ran.
    struct Scripted {
        failing: Arc<Mutex<bool>>,
        ran: Arc<Mutex<Vec<Instant>>>,
    }

    impl Attempt for Scripted {
        async fn attempt(&mut self) -> Result<(), String> {
            self.ran.lock().unwrap().push(Instant::now());
            match *self.failing.lock().unwrap() {
                true => Err("connection refused".into()),
                false => Ok(()),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_passes_back_off_to_a_minute_and_a_success_starts_over() {
        let failing = Arc::new(Mutex::new(true));
        let ran = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(Mutex::new(UploadStatus::default()));
        let wake = Arc::new(Notify::new());
        let (stop_tx, stop) = watch::channel(false);
        let passes = Scripted {
            failing: failing.clone(),
            ran: ran.clone(),
        };
        let t0 = Instant::now();
        let task = {
            let (status, wake) = (status.clone(), wake.clone());
            // No jitter here: the schedule itself is what is tested.
            let done = watch::channel(0).0;
            tokio::spawn(async move { schedule(passes, &status, &wake, |d| d, &done, stop).await })
        };
        let offsets = |from: usize| -> Vec<u64> {
            ran.lock().unwrap()[from..]
                .iter()
                .map(|t| (*t - t0).as_secs())
                .collect()
        };
        tokio::time::sleep(Duration::from_secs(200)).await;
        // 1, 2, 4, ... capped at 60 s between passes.
        assert_eq!(offsets(0), vec![0, 1, 3, 7, 15, 31, 63, 123, 183]);
        assert_eq!(
            status.lock().unwrap().last_error.as_deref(),
            Some("connection refused")
        );
        // Woken during a back-off (a fragment was claimed): the back-off is still waited out,
        // and the wake is not lost: one more pass follows the next success at once.
        wake.notify_one();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(ran.lock().unwrap().len(), 9);

        // The server is back: the next pass succeeds and the error clears.
        *failing.lock().unwrap() = false;
        tokio::time::sleep(Duration::from_secs(45)).await;
        assert_eq!(offsets(9), vec![243, 243]);
        assert_eq!(status.lock().unwrap().last_error, None);
        // Idle: a pass every 10 s, or at once when woken.
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert_eq!(offsets(11), vec![253, 263]);
        wake.notify_one();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(offsets(13), vec![271]);
        // A new failure starts the back-off over at 1 s.
        *failing.lock().unwrap() = true;
        tokio::time::sleep(Duration::from_secs(14)).await;
        assert_eq!(offsets(14), vec![281, 282, 284]);
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }
}
