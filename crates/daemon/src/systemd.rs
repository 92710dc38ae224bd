//! What systemd hears over its notify socket: `READY=1` once the first fragment is sealed into
//! the ring, `STATUS=` lines for `systemctl status`, and `WATCHDOG=1` pings.
//!
//! Everything here reads what the other parts publish: the [`Published`] status (a watch), the
//! capture facts (frames, paused) and one [`Pulse`] per loop that must never hang (the conductor,
//! storage, capture supervision). [`Watchdog`] decides: it pings only while every loop has made
//! progress since the last ping and the camera delivers frames (or capture is paused on purpose,
//! in privacy mode). A stuck loop or a hung camera stops the pings, and systemd restarts the
//! service after `WatchdogSec=`; the open recording is then recovered as `interrupted`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::capture;
use crate::status::{Published, status_line};

/// How often the watchdog decision is taken (pings themselves are rarer, see [`Watchdog`]).
const CHECK: Duration = Duration::from_millis(100);
/// No new frame for this long: the camera or the pipeline has stalled.
const FRAMES_STALL: Duration = Duration::from_secs(2);
/// Pings are at least this far apart, whatever systemd's period.
const MIN_PING_GAP: Duration = Duration::from_millis(500);

/// The progress of one loop: bumped every time round it. Lock-free, because the storage thread
/// beats it too.
#[derive(Debug, Clone, Default)]
pub struct Pulse(Arc<AtomicU64>);

impl Pulse {
    /// One more time round.
    pub fn beat(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Beats so far.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What goes to systemd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// `READY=1`, with the `STATUS=` line of the moment.
    Ready(String),
    /// `STATUS=`: what `systemctl status` shows.
    Status(String),
    /// `WATCHDOG=1`.
    Watchdog,
}

/// Where notices go: systemd's socket in production, a list in tests.
pub trait Notifier: Send + 'static {
    /// Sends one notice; failures are not ours to handle (no systemd, no socket).
    fn notify(&mut self, notice: Notice);
}

/// systemd's notify socket (`NOTIFY_SOCKET`); does nothing when not run by systemd.
#[derive(Debug, Default)]
pub struct SdNotify;

impl Notifier for SdNotify {
    fn notify(&mut self, notice: Notice) {
        use sd_notify::NotifyState;
        let _ = match &notice {
            Notice::Ready(line) => {
                sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(line)])
            }
            Notice::Status(line) => sd_notify::notify(&[NotifyState::Status(line)]),
            Notice::Watchdog => sd_notify::notify(&[NotifyState::Watchdog]),
        };
    }
}

/// The watchdog decision: whether to ping now.
#[derive(Debug)]
pub struct Watchdog {
    /// systemd's period (`WatchdogSec=`): pings every quarter of it.
    period: Duration,
    /// Each loop that must make progress, and its beat count at the last ping.
    pulses: Vec<(&'static str, Pulse, u64)>,
    /// The camera's frame counter as last seen, and when it last grew.
    frames: (u64, Instant),
    /// The last ping.
    last_ping: Option<Instant>,
    /// Since when pings are held back, and whether the operator was told.
    withheld: Option<(Instant, bool)>,
}

impl Watchdog {
    /// A watchdog for systemd's `period`, judging the given loops from `now` on.
    pub fn new(period: Duration, pulses: Vec<(&'static str, Pulse)>, now: Instant) -> Self {
        Watchdog {
            period,
            pulses: pulses
                .into_iter()
                .map(|(name, p)| {
                    let seen = p.count();
                    (name, p, seen)
                })
                .collect(),
            frames: (0, now),
            last_ping: None,
            withheld: None,
        }
    }

    /// Whether to ping at `now`. `ready`: READY=1 went out (no ping before it); `frames`: the
    /// camera's frame counter; `paused`: capture is stopped on purpose (privacy).
    pub fn check(&mut self, now: Instant, ready: bool, frames: u64, paused: bool) -> bool {
        if frames != self.frames.0 {
            self.frames = (frames, now);
        }
        let due = self
            .last_ping
            .is_none_or(|t| now - t >= (self.period / 4).max(MIN_PING_GAP));
        if !ready || !due {
            return false;
        }
        let stuck = self
            .pulses
            .iter()
            .find(|(_, p, seen)| p.count() == *seen)
            .map(|(name, ..)| *name);
        let flowing = now - self.frames.1 < FRAMES_STALL;
        let why_not = match stuck {
            Some(name) => Some(format!("the {name} loop has made no progress")),
            None if !flowing && !paused => Some("no frames from the camera".to_string()),
            None => None,
        };
        match why_not {
            None => {
                for (_, p, seen) in &mut self.pulses {
                    *seen = p.count();
                }
                self.last_ping = Some(now);
                self.withheld = None;
                true
            }
            Some(why) => {
                let (since, told) = self.withheld.get_or_insert((now, false));
                if !*told && now - *since >= self.period / 2 {
                    log::error!(watchdog_secs = self.period.as_secs();
                        "watchdog pings held back: {why}; systemd restarts neoflixd if this lasts the watchdog period");
                    *told = true;
                }
                false
            }
        }
    }
}

/// Tells systemd what the status and the loops say, until `stop`.
pub async fn run(
    watchdog: Option<Duration>,
    mut status: watch::Receiver<Published>,
    capture: watch::Receiver<capture::Facts>,
    pulses: Vec<(&'static str, Pulse)>,
    mut notifier: impl Notifier,
    mut stop: watch::Receiver<bool>,
) {
    let mut dog = watchdog.map(|p| Watchdog::new(p, pulses, Instant::now()));
    let mut ready = false;
    let mut line = String::new();
    let mut status_open = true;
    let mut every = tokio::time::interval(CHECK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            r = status.changed(), if status_open => status_open = r.is_ok(),
            _ = every.tick() => {}
        }
        let (capturing, text) = {
            let p = status.borrow_and_update();
            (p.capturing, status_line(&p.status))
        };
        // systemd's "started" means what the room needs: video is being sealed.
        if !ready && capturing {
            notifier.notify(Notice::Ready(text.clone()));
            ready = true;
            line = text;
        } else if text != line {
            notifier.notify(Notice::Status(text.clone()));
            line = text;
        }
        if let Some(dog) = &mut dog {
            let (frames, paused) = {
                let c = capture.borrow();
                (c.frames, c.paused)
            };
            if dog.check(Instant::now(), ready, frames, paused) {
                notifier.notify(Notice::Watchdog);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;

    #[derive(Clone, Default)]
    struct Recorded(Arc<Mutex<Vec<(Instant, Notice)>>>);

    impl Notifier for Recorded {
        fn notify(&mut self, notice: Notice) {
            self.0.lock().unwrap().push((Instant::now(), notice));
        }
    }

    impl Recorded {
        fn pings(&self, from: Instant, to: Instant) -> Vec<Instant> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .filter(|(t, n)| *n == Notice::Watchdog && *t >= from && *t <= to)
                .map(|(t, _)| *t)
                .collect()
        }
    }

    /// The loops and the camera, as the watchdog sees them, moving every 100 ms unless stopped.
    struct World {
        frozen: [Arc<AtomicBool>; 3],
        camera: Arc<AtomicBool>,
    }

    fn world(pulses: [Pulse; 3], facts: watch::Sender<capture::Facts>) -> World {
        let frozen: [Arc<AtomicBool>; 3] = Default::default();
        let camera = Arc::new(AtomicBool::new(true));
        let (f, c) = (frozen.clone(), camera.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(100));
            loop {
                every.tick().await;
                for (p, frozen) in pulses.iter().zip(&f) {
                    if !frozen.load(Ordering::Relaxed) {
                        p.beat();
                    }
                }
                if c.load(Ordering::Relaxed) {
                    facts.send_modify(|f| f.frames += 2);
                }
            }
        });
        World { frozen, camera }
    }

    async fn idle(d: Duration) -> (Instant, Instant) {
        let from = Instant::now();
        tokio::time::sleep(d).await;
        (from, Instant::now())
    }

    /// Longest gap between pings (or the window's ends) within `from..to`.
    fn longest_silence(pings: &[Instant], from: Instant, to: Instant) -> Duration {
        let mut last = from;
        let mut longest = Duration::ZERO;
        for &t in pings {
            longest = longest.max(t - last);
            last = t;
        }
        longest.max(to - last)
    }

    #[tokio::test(start_paused = true)]
    async fn pings_only_after_ready_while_every_loop_moves_and_frames_flow() {
        let period = Duration::from_secs(2);
        let pulses: [Pulse; 3] = Default::default();
        let (facts_tx, facts_rx) = watch::channel(capture::Facts::default());
        let (status_tx, status_rx) = watch::channel(Published::for_tests());
        let (_stop_tx, stop_rx) = watch::channel(false);
        let notices = Recorded::default();
        let named = vec![
            ("conductor", pulses[0].clone()),
            ("storage", pulses[1].clone()),
            ("capture", pulses[2].clone()),
        ];
        tokio::spawn(run(
            Some(period),
            status_rx,
            facts_rx.clone(),
            named,
            notices.clone(),
            stop_rx,
        ));
        let w = world(pulses, facts_tx.clone());

        // Frames flow, but no fragment is sealed yet: no READY, no ping.
        let (from, to) = idle(Duration::from_secs(3)).await;
        assert!(notices.pings(from, to).is_empty());
        status_tx.send_modify(|p| p.capturing = true);
        let (from, to) = idle(Duration::from_secs(3)).await;
        let pings = notices.pings(from, to);
        let seen: Vec<Notice> = notices
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, n)| n.clone())
            .collect();
        let ready = seen.iter().position(|n| matches!(n, Notice::Ready(_)));
        let first_ping = seen.iter().position(|n| *n == Notice::Watchdog);
        assert!(ready.is_some() && ready < first_ping, "{seen:?}");
        // Every quarter period (500 ms): never close to systemd's 2 s.
        assert!(pings.len() >= 5, "{pings:?}");
        assert!(longest_silence(&pings, from, to) <= Duration::from_millis(600));

        // The storage loop hangs (a stuck fsync): pings stop, whatever the camera does.
        w.frozen[1].store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(600)).await;
        let (from, to) = idle(Duration::from_secs(5)).await;
        assert!(notices.pings(from, to).is_empty());
        // It comes back: so do the pings.
        w.frozen[1].store(false, Ordering::Relaxed);
        let (from, to) = idle(Duration::from_secs(2)).await;
        assert!(!notices.pings(from, to).is_empty());

        // So does a hung conductor or capture supervisor.
        for part in [0, 2] {
            w.frozen[part].store(true, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(600)).await;
            let (from, to) = idle(Duration::from_secs(3)).await;
            assert!(notices.pings(from, to).is_empty(), "part {part}");
            w.frozen[part].store(false, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }

        // The camera stops delivering: after 2 s without a frame, no more pings.
        w.camera.store(false, Ordering::Relaxed);
        tokio::time::sleep(FRAMES_STALL + Duration::from_millis(100)).await;
        let (from, to) = idle(Duration::from_secs(4)).await;
        assert!(notices.pings(from, to).is_empty());
        // Unless capture is paused on purpose (privacy): the service is healthy.
        facts_tx.send_modify(|f| f.paused = true);
        let (from, to) = idle(Duration::from_secs(3)).await;
        let pings = notices.pings(from, to);
        assert!(longest_silence(&pings, from, to) <= Duration::from_millis(600));
    }

    #[tokio::test(start_paused = true)]
    async fn status_lines_follow_the_status_before_and_after_ready() {
        let (status_tx, status_rx) = watch::channel(Published::for_tests());
        let (_facts_tx, facts_rx) = watch::channel(capture::Facts::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let notices = Recorded::default();
        let task = tokio::spawn(run(
            None,
            status_rx,
            facts_rx,
            Vec::new(),
            notices.clone(),
            stop_rx,
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        status_tx.send_modify(|p| p.capturing = true);
        tokio::time::sleep(Duration::from_secs(1)).await;
        status_tx.send_modify(|p| {
            p.status.reasons = vec!["privacy mode".into()];
            p.status.time_utc = "later".into();
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Only a new line is sent, not the same one again for a newer time.
        status_tx.send_modify(|p| p.status.time_utc = "later still".into());
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop_tx.send(true).unwrap();
        task.await.unwrap();
        let seen: Vec<Notice> = notices
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, n)| n.clone())
            .collect();
        assert_eq!(
            seen,
            vec![
                Notice::Status("ready".into()),
                Notice::Ready("ready".into()),
                Notice::Status("not ready: privacy mode".into()),
            ]
        );
    }
}
