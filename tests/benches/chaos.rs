//! The chaos suite (`scripts/chaos`, docs/reliability.md): the real `neoflixd` and
//! `neoflix-ingest` (release builds) broken on purpose, many times, at moments drawn at random,
//! and every recording the suite started accounted for at the end: on the server, complete or
//! `interrupted`, verified (signature, chain, every chunk opened with the department key),
//! exported and decoded by ffmpeg, there once, and as long as the wall-clock time it ran less
//! one fragment per interruption.
//!
//! Phases, each chosen by an option (with `--seed S` to repeat a run, `--max-secs T` to stop
//! drawing after T seconds of a phase):
//! - `--kills N` (20): the box killed with SIGKILL and restarted: filling the pre-roll, at the
//!   trigger, mid-recording (live upload), during finalize, during recovery;
//! - `--server-kills N`: the server killed mid-upload and mid-receipt and restarted, while one
//!   box process runs on; its memory and open files are sampled after each restart;
//! - `--disk-full`: the box's recordings disk, then the server's, filled mid-recording and
//!   freed (tmpfs; root);
//! - `--network-secs S`: box and server in two network namespaces joined by a veth pair, netem
//!   cycling loss, delay, jitter, reordering, bandwidth caps and cut links for S seconds while
//!   recordings are made, the server restarted in between (root, `sch_netem`: the VM lab);
//! - `--power-cuts N`: the VM lab's power cut at random moments of recording and upload, box
//!   and server on one ext4 disk image, each next boot recovering.
//!
//! Prints a table and a last line
//! `chaos: N recordings, N complete, N interrupted, 0 lost, 0 corrupted, 0 duplicated`; exits
//! non-zero on any loss, corruption, duplicate or leak.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

use neoflix_control::{Request, Status};
use neoflix_e2e::{Daemon, Ingest, Lab, ffmpeg_errors, ffprobe};
use serde::{Deserialize, Serialize};

const CAPTURE: &str = "source = \"test\"\nwidth = 320\nheight = 180\nfps = 15\nbitrate_kbps = 300\nx264_preset = \"ultrafast\"";
/// Small, so that a full-length recording fits the small disks of `--disk-full`.
const RECORDINGS: &str = "max_duration_secs = 120\n";
const PREROLL_SECS: f64 = 2.0;
const FRAGMENT_SECS: f64 = 1.0;
/// Timing slack in the duration check: the control round trip and the kill itself.
const SLACK_SECS: f64 = 0.5;
/// The line of the guest's output that carries its outcome to the host.
const RESULT_PREFIX: &str = "chaos-result: ";
/// Addresses of the veth pair: the server's end stays in the root namespace.
const SERVER_IP: &str = "10.77.0.1";
const BOX_IP: &str = "10.77.0.2";
const NETNS: &str = "nfx-chaos-box";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum Moment {
    FillingPreroll,
    AtTrigger,
    MidRecording,
    DuringFinalize,
    DuringRecovery,
    ServerMidUpload,
    ServerMidReceipt,
    BoxDiskFull,
    ServerDiskFull,
    Network,
    PowerCut,
}

impl Moment {
    fn name(self) -> &'static str {
        match self {
            Moment::FillingPreroll => "kill: filling the pre-roll",
            Moment::AtTrigger => "kill: at the trigger",
            Moment::MidRecording => "kill: mid-recording",
            Moment::DuringFinalize => "kill: during finalize",
            Moment::DuringRecovery => "kill: during recovery",
            Moment::ServerMidUpload => "server kill: mid-upload",
            Moment::ServerMidReceipt => "server kill: mid-receipt",
            Moment::BoxDiskFull => "box disk full",
            Moment::ServerDiskFull => "server disk full",
            Moment::Network => "network chaos",
            Moment::PowerCut => "power cut",
        }
    }
}

/// A recording the suite started.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Started {
    id: String,
    moment: Moment,
    /// Wall-clock seconds from the `start` reply to the kill or `stop`.
    wall_secs: f64,
    /// Stopped cleanly (it may still be interrupted by a kill in finalize).
    stopped: bool,
}

/// One row of the table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Row {
    events: u32,
    recordings: u32,
    complete: u32,
    interrupted: u32,
}

/// What a phase found; phases run in a VM hand theirs to the host as one JSON line.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Outcome {
    rows: BTreeMap<Moment, Row>,
    recordings: u32,
    complete: u32,
    interrupted: u32,
    lost: Vec<String>,
    corrupted: Vec<String>,
    duplicated: u32,
    /// Failures that are neither loss nor corruption: a leak, a late pre-roll.
    failures: Vec<String>,
    /// Figures for the report.
    notes: Vec<String>,
}

impl Outcome {
    fn merge(&mut self, other: Outcome) {
        for (m, r) in other.rows {
            let row = self.rows.entry(m).or_default();
            row.events += r.events;
            row.recordings += r.recordings;
            row.complete += r.complete;
            row.interrupted += r.interrupted;
        }
        self.recordings += other.recordings;
        self.complete += other.complete;
        self.interrupted += other.interrupted;
        self.lost.extend(other.lost);
        self.corrupted.extend(other.corrupted);
        self.duplicated += other.duplicated;
        self.failures.extend(other.failures);
        self.notes.extend(other.notes);
    }

    fn ok(&self) -> bool {
        self.lost.is_empty()
            && self.corrupted.is_empty()
            && self.duplicated == 0
            && self.failures.is_empty()
    }

    fn print(&self) {
        println!(
            "{:28} {:>7} {:>11} {:>9} {:>12}",
            "event", "events", "recordings", "complete", "interrupted"
        );
        for (moment, r) in &self.rows {
            println!(
                "{:28} {:>7} {:>11} {:>9} {:>12}",
                moment.name(),
                r.events,
                r.recordings,
                r.complete,
                r.interrupted
            );
        }
        for n in &self.notes {
            println!("{n}");
        }
        for l in &self.lost {
            println!("LOST {l}");
        }
        for c in &self.corrupted {
            println!("CORRUPTED {c}");
        }
        for f in &self.failures {
            println!("FAILED {f}");
        }
        println!(
            "chaos: {} recordings, {} complete, {} interrupted, {} lost, {} corrupted, {} duplicated",
            self.recordings,
            self.complete,
            self.interrupted,
            self.lost.len(),
            self.corrupted.len(),
            self.duplicated
        );
    }
}

#[derive(Debug, Clone, Default)]
struct Options {
    kills: u32,
    server_kills: u32,
    power_cuts: u32,
    network_secs: u64,
    disk_full: bool,
    seed: u64,
    max_secs: Option<u64>,
    /// Inside the VM lab: one boot of the power-cut phase on the lab at this path.
    power_cut_boot: Option<PathBuf>,
    /// Inside the VM lab: the last boot, which lets recovery and delivery finish and accounts.
    power_cut_final: Option<PathBuf>,
    /// The last boot and the accounting of a power-cut lab left by a run that was stopped
    /// before them (its lab directory kept).
    power_cut_resume: Option<PathBuf>,
    /// Inside the VM lab: the network phase, which leaves its lab and its starts in this
    /// directory (shared with the host) for the host to account.
    network_guest: Option<PathBuf>,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        kills: 20,
        seed: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1,
        ..Options::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            args.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a whole number"))
        };
        match a.as_str() {
            "--kills" => o.kills = value("--kills")? as u32,
            "--server-kills" => o.server_kills = value("--server-kills")? as u32,
            "--power-cuts" => o.power_cuts = value("--power-cuts")? as u32,
            "--network-secs" => o.network_secs = value("--network-secs")?,
            "--disk-full" => o.disk_full = true,
            "--seed" => o.seed = value("--seed")?.max(1),
            "--max-secs" => o.max_secs = Some(value("--max-secs")?),
            "--power-cut-boot" => o.power_cut_boot = args.next().map(PathBuf::from),
            "--power-cut-final" => o.power_cut_final = args.next().map(PathBuf::from),
            "--power-cut-resume" => o.power_cut_resume = args.next().map(PathBuf::from),
            "--network-guest" => o.network_guest = args.next().map(PathBuf::from),
            // cargo bench passes this; it is not ours.
            "--bench" => {}
            other => {
                return Err(format!(
                    "unknown option {other}: use --kills N, --server-kills N, --power-cuts N, \
                     --network-secs S, --disk-full, --seed S, --max-secs T"
                ));
            }
        }
    }
    Ok(o)
}

/// xorshift64: reproducible with `--seed`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.next() % (to - from + 1))
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--list") {
        return ExitCode::SUCCESS;
    }
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("chaos: {e}");
            return ExitCode::from(2);
        }
    };
    let mut rng = Rng(o.seed);
    // The guest's parts: they print their outcome as one line for the host.
    if let Some(dir) = &o.power_cut_boot {
        power_cut_boot(dir, &mut rng);
        return ExitCode::SUCCESS;
    }
    if let Some(dir) = &o.power_cut_final {
        let outcome = power_cut_final(dir);
        println!(
            "{RESULT_PREFIX}{}",
            serde_json::to_string(&outcome).unwrap()
        );
        return ExitCode::SUCCESS;
    }
    if let Some(dir) = &o.network_guest {
        let outcome = network(&o, &mut rng, dir);
        println!(
            "{RESULT_PREFIX}{}",
            serde_json::to_string(&outcome).unwrap()
        );
        return ExitCode::SUCCESS;
    }

    println!(
        "chaos: seed {} (give --seed {} to repeat this run)",
        o.seed, o.seed
    );
    let mut total = Outcome::default();
    if let Some(dir) = &o.power_cut_resume {
        let lab = Lab::at(dir, "room-e2e");
        total.merge(power_cut_last_boot(&lab, &power_cut_vm_args(&lab), 1900));
        let cuts = std::fs::read_to_string(lab.path("started.log"))
            .map(|s| s.lines().count())
            .unwrap_or(0);
        total.notes.push(format!(
            "resumed: {cuts} recordings were started before the cuts"
        ));
        total.print();
        return if total.ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    if o.kills > 0 || o.server_kills > 0 || o.disk_full {
        total.merge(on_this_host(&o, &mut rng));
    }
    if o.network_secs > 0 {
        total.merge(network_chaos(&o, &mut rng));
    }
    if o.power_cuts > 0 {
        total.merge(power_cuts(&o, &mut rng));
    }
    total.print();
    if total.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Kills, server kills and full disks: one lab, one server, on loopback.
fn on_this_host(o: &Options, rng: &mut Rng) -> Outcome {
    let lab = Lab::new();
    lab.pki(&[&lab.device]);
    // The full disks are file systems of their own, filled and freed by the suite.
    let disks = o.disk_full.then(|| {
        (
            Tmpfs::mount(&lab.path("recordings"), "64m"),
            Tmpfs::mount(&lab.path("server"), "1g"),
        )
    });
    let mut ingest = lab.ingest_config(64 << 20);
    ingest.start();
    lab.config(
        CAPTURE,
        PREROLL_SECS as u32,
        &format!("{RECORDINGS}{}", lab.upload_section(&ingest, &lab.device)),
    );
    let mut tally = Tally::default();
    box_kills(&lab, o, rng, &mut tally);
    if o.server_kills > 0 {
        server_kills(&lab, &mut ingest, o, rng, &mut tally);
    }
    if let Some((boxdisk, serverdisk)) = &disks {
        disk_full(&lab, boxdisk, serverdisk, o, rng, &mut tally);
    }
    deliver_everything(&lab, &mut ingest, &mut tally);
    let mut outcome = account(&lab, &tally.started, &lab.path("server"), false);
    tally.into_outcome(&mut outcome);
    drop(ingest);
    drop(disks);
    outcome
}

/// What the phases note as they go.
#[derive(Default)]
struct Tally {
    started: Vec<Started>,
    events: BTreeMap<Moment, u32>,
    /// The longest wait from a (re)start to a whole pre-roll, and how many were over
    /// pre-roll + 2 s.
    slowest_preroll: f64,
    late_prerolls: u32,
    restarts_timed: u32,
    failures: Vec<String>,
    notes: Vec<String>,
}

impl Tally {
    fn event(&mut self, m: Moment) {
        *self.events.entry(m).or_default() += 1;
    }

    fn into_outcome(self, outcome: &mut Outcome) {
        for (m, n) in self.events {
            outcome.rows.entry(m).or_default().events += n;
        }
        if self.restarts_timed > 0 {
            outcome.notes.push(format!(
                "pre-roll whole again after a restart: {} restarts, slowest {:.2} s, over {} s: {}",
                self.restarts_timed,
                self.slowest_preroll,
                PREROLL_SECS + 2.0,
                self.late_prerolls
            ));
        }
        if self.late_prerolls > 0 {
            outcome.failures.push(format!(
                "the pre-roll was whole later than pre-roll + 2 s after {} restarts",
                self.late_prerolls
            ));
        }
        outcome.failures.extend(self.failures);
        outcome.notes.extend(self.notes);
    }

    /// Waits for a whole pre-roll after a (re)start at `t0`, timing it.
    fn wait_preroll(&mut self, d: &mut Daemon, t0: Instant) {
        wait_preroll(d);
        let took = t0.elapsed().as_secs_f64();
        self.restarts_timed += 1;
        self.slowest_preroll = self.slowest_preroll.max(took);
        if took > PREROLL_SECS + 2.0 {
            self.late_prerolls += 1;
        }
    }
}

fn wait_preroll(d: &mut Daemon) -> Status {
    // Not `ready`: a full disk makes the box not ready, yet it records.
    d.wait_for("a whole pre-roll", Duration::from_secs(60), |s| {
        s.preroll_secs >= PREROLL_SECS - 0.1
    })
}

fn over(o: &Options, began: Instant) -> bool {
    o.max_secs.is_some_and(|m| began.elapsed().as_secs() >= m)
}

/// `start`, naming the recording.
fn start(d: &Daemon) -> (String, Instant) {
    let r = d.ctl(Request::Start {});
    let id = r
        .recording
        .clone()
        .unwrap_or_else(|| panic!("start names the recording: {r:?}"));
    (id, Instant::now())
}

/// `stop`, then waits until the recording has ended (with the fragment in progress at the
/// stop), as a room does before its next start: a start meanwhile ends it at once, without
/// that fragment, which the next recording holds instead (docs/reliability.md).
fn stop(d: &mut Daemon) -> bool {
    let ok = d.ctl(Request::Stop {}).ok;
    if ok {
        d.wait_for("the recording to end", Duration::from_secs(30), |s| {
            s.recording.is_none()
        });
    }
    ok
}

/// The box killed at random moments and restarted each time.
fn box_kills(lab: &Lab, o: &Options, rng: &mut Rng, tally: &mut Tally) {
    let began = Instant::now();
    let mut last_interrupted = false;
    for _ in 0..o.kills {
        if over(o, began) {
            break;
        }
        let moment = match rng.below(5) {
            0 => Moment::FillingPreroll,
            1 => Moment::AtTrigger,
            2 => Moment::MidRecording,
            3 => Moment::DuringFinalize,
            _ if last_interrupted => Moment::DuringRecovery,
            _ => Moment::MidRecording,
        };
        tally.event(moment);
        let t0 = Instant::now();
        let mut d = lab.start();
        last_interrupted = false;
        match moment {
            Moment::FillingPreroll => std::thread::sleep(rng.millis(0, 1500)),
            Moment::DuringRecovery => std::thread::sleep(rng.millis(0, 300)),
            _ => {
                tally.wait_preroll(&mut d, t0);
                let (id, at) = start(&d);
                let (stopped, wall_secs) = match moment {
                    Moment::AtTrigger => {
                        std::thread::sleep(rng.millis(0, 50));
                        (false, at.elapsed().as_secs_f64())
                    }
                    Moment::MidRecording => {
                        std::thread::sleep(rng.millis(300, 3000));
                        (false, at.elapsed().as_secs_f64())
                    }
                    _ => {
                        std::thread::sleep(rng.millis(500, 2000));
                        let wall = at.elapsed().as_secs_f64();
                        let stopped = d.ctl(Request::Stop {}).ok;
                        // The stop waits for the fragment in progress (up to a fragment),
                        // then finalizes.
                        std::thread::sleep(rng.millis(0, 1300));
                        (stopped, wall)
                    }
                };
                tally.started.push(Started {
                    id,
                    moment,
                    wall_secs,
                    stopped,
                });
                last_interrupted = true;
            }
        }
        d.kill9();
    }
}

/// The resident memory (KiB) and open files of a process.
fn rss_and_files(pid: u32) -> (u64, usize) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    let files = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (rss, files)
}

/// The server killed mid-upload and mid-receipt, every 0.2–1.2 s, while one box process
/// records on (recordings of 2–15 s, one after another); the box's memory and open files are
/// sampled after each restart of the server.
fn server_kills(lab: &Lab, ingest: &mut Ingest, o: &Options, rng: &mut Rng, tally: &mut Tally) {
    let began = Instant::now();
    let mut d = lab.start();
    wait_preroll(&mut d);
    let pid = d.pid().expect("running");
    let mut samples = Vec::new();
    // The recording running: its id, start and planned length.
    let mut open: Option<(String, Instant, Duration)> = None;
    let mut last_stop: Option<Instant> = None;
    for _ in 0..o.server_kills {
        if over(o, began) {
            break;
        }
        if open.is_none() {
            wait_preroll(&mut d);
            let (id, at) = start(&d);
            open = Some((id, at, rng.millis(2000, 15000)));
        }
        std::thread::sleep(rng.millis(200, 1200));
        // Within 2 s of a stop the last fragment, the manifest and the receipt are on the way.
        let moment = if last_stop.is_some_and(|t| t.elapsed() < Duration::from_secs(2)) {
            Moment::ServerMidReceipt
        } else {
            Moment::ServerMidUpload
        };
        tally.event(moment);
        if moment == Moment::ServerMidReceipt
            && let Some(last) = tally.started.last_mut()
        {
            last.moment = Moment::ServerMidReceipt;
        }
        ingest.kill9();
        std::thread::sleep(rng.millis(0, 300));
        ingest.start();
        samples.push(rss_and_files(pid));
        if let Some((id, at, _)) = open.take_if(|(_, at, length)| at.elapsed() >= *length) {
            let wall_secs = at.elapsed().as_secs_f64();
            let stopped = stop(&mut d);
            last_stop = Some(Instant::now());
            tally.started.push(Started {
                id,
                moment: Moment::ServerMidUpload,
                wall_secs,
                stopped,
            });
        }
    }
    if let Some((id, at, _)) = open {
        let wall_secs = at.elapsed().as_secs_f64();
        let stopped = stop(&mut d);
        tally.started.push(Started {
            id,
            moment: Moment::ServerMidUpload,
            wall_secs,
            stopped,
        });
    }
    // The samples are all taken the same way, just after a restart of the server; delivery
    // of what is owed follows.
    wait_for_delivery(lab, Duration::from_secs(120));
    stop_box(d, "the server kills", tally);
    leak_check("the box", &samples, tally);
}

/// Compares memory and open files early (after a tenth, when caches have filled) and at the
/// end of a run of samples.
fn leak_check(what: &str, samples: &[(u64, usize)], tally: &mut Tally) {
    if samples.len() < 2 {
        return;
    }
    let early = samples[samples.len() / 10];
    let last = samples[samples.len() - 1];
    let peak = samples.iter().map(|s| s.0).max().unwrap_or(0);
    tally.notes.push(format!(
        "{what} over {} server restarts: memory {} KiB early, {} KiB at the end (peak {peak} KiB); open files {} early, {} at the end",
        samples.len(),
        early.0,
        last.0,
        early.1,
        last.1
    ));
    // Short runs cannot tell growth from noise.
    if samples.len() >= 20 {
        if last.1 > early.1 + 8 {
            tally.failures.push(format!(
                "{what}: open files grew from {} to {}",
                early.1, last.1
            ));
        }
        if last.0 > early.0 + early.0 / 4 + 8192 {
            tally.failures.push(format!(
                "{what}: memory grew from {} KiB to {} KiB",
                early.0, last.0
            ));
        }
    }
}

/// A small tmpfs mounted over a directory, unmounted when dropped (root).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .expect("mount runs");
        assert!(st.success(), "--disk-full needs root to mount a tmpfs");
        Tmpfs(dir.to_owned())
    }

    /// Fills it but for a few KiB; returns the filler.
    fn fill(&self) -> PathBuf {
        let filler = self.0.join(".chaos-filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 1 << 20];
        while f.write_all(&block).is_ok() {}
        let small = [0u8; 4096];
        while f.write_all(&small).is_ok() {}
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The box's recordings disk, then the server's, filled mid-recording and freed.
fn disk_full(
    lab: &Lab,
    boxdisk: &Tmpfs,
    serverdisk: &Tmpfs,
    o: &Options,
    rng: &mut Rng,
    tally: &mut Tally,
) {
    let began = Instant::now();
    let mut d = lab.start();
    wait_preroll(&mut d);
    for round in 0..6 {
        if over(o, began) {
            break;
        }
        let moment = if round % 2 == 0 {
            Moment::BoxDiskFull
        } else {
            Moment::ServerDiskFull
        };
        tally.event(moment);
        wait_preroll(&mut d);
        let filler = if moment == Moment::ServerDiskFull {
            Some(serverdisk.fill())
        } else {
            None
        };
        let (id, at) = start(&d);
        std::thread::sleep(rng.millis(300, 1500));
        if moment == Moment::BoxDiskFull {
            // Fragments wait in the ring while the disk is full; the catch-up claims them.
            let filler = boxdisk.fill();
            std::thread::sleep(rng.millis(1000, 4000));
            std::fs::remove_file(filler).unwrap();
        }
        std::thread::sleep(rng.millis(500, 1500));
        let wall_secs = at.elapsed().as_secs_f64();
        let stopped = stop(&mut d);
        if let Some(filler) = filler {
            // The server refuses (507) meanwhile; the box keeps the recording.
            std::thread::sleep(rng.millis(1000, 5000));
            std::fs::remove_file(filler).unwrap();
        }
        tally.started.push(Started {
            id,
            moment,
            wall_secs,
            stopped,
        });
    }
    wait_for_delivery(lab, Duration::from_secs(120));
    stop_box(d, "the full disks", tally);
}

/// Lets the box deliver what it owes (up to `limit`), then stops it; a box still holding
/// recordings or not stopping cleanly fails the run.
fn finish(lab: &Lab, d: Daemon, limit: Duration, after: &str, tally: &mut Tally) {
    if !wait_for_delivery(lab, limit) {
        tally.failures.push(format!(
            "{} recordings still on the box {} s after {after}",
            lab.recordings().len(),
            limit.as_secs()
        ));
    }
    stop_box(d, after, tally);
}

/// SIGTERM; an unclean stop fails the run.
fn stop_box(d: Daemon, after: &str, tally: &mut Tally) {
    if d.terminate() != 0 {
        tally
            .failures
            .push(format!("neoflixd did not stop cleanly after {after}"));
    }
}

/// Waits (up to `limit`) until the box holds no recording: each delivered and receipted.
fn wait_for_delivery(lab: &Lab, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if lab.recordings().is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// A last start of the box against a running server: recovery seals what was interrupted, and
/// everything owed is delivered.
fn deliver_everything(lab: &Lab, ingest: &mut Ingest, tally: &mut Tally) {
    if !ingest.running() {
        ingest.start();
    }
    let mut d = lab.start();
    wait_preroll(&mut d);
    finish(lab, d, Duration::from_secs(300), "the last start", tally);
}

/// Every recording the suite started, found on the server (`server`) or, undelivered, on the
/// box; checked and measured.
fn account(lab: &Lab, started: &[Started], server: &Path, strays_allowed: bool) -> Outcome {
    let key = lab.key().display().to_string();
    let custody = lab.custody_args();
    let mut out = Outcome::default();
    // Every recording found, by id: (status, seconds recorded after the trigger, pre-roll).
    let mut found: BTreeMap<String, Vec<(String, f64, f64)>> = BTreeMap::new();
    // Sealed fragments recorded after a trigger, by digest: in two recordings is a duplicate
    // (a pre-roll may share the end of the recording before it; what follows a trigger may
    // not).
    let mut after_trigger: BTreeMap<String, u32> = BTreeMap::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(server.join(&lab.device))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.retain(|p| p.is_dir());
    let undelivered = lab.recordings();
    if !undelivered.is_empty() {
        out.failures.push(format!(
            "{} recordings were never delivered: {:?}",
            undelivered.len(),
            undelivered
        ));
    }
    dirs.extend(undelivered);
    for dir in dirs {
        let name = dir.display().to_string();
        let m = match neoflix_format::verify(&dir) {
            Ok(v) => v.manifest,
            Err(e) => {
                out.corrupted.push(format!("{name}: {e}"));
                continue;
            }
        };
        let mut args = vec!["verify", name.as_str(), "--key", key.as_str()];
        args.extend(custody.iter().map(String::as_str));
        let v = neoflix_e2e::neoflix(&args);
        if !v.status.success() {
            out.corrupted
                .push(format!("{name}: {}", String::from_utf8_lossy(&v.stderr)));
            continue;
        }
        let mp4 = lab.path(&format!("export-{}.mp4", m.recording_id));
        let e = lab.export(&dir, &mp4);
        if !e.status.success() {
            out.corrupted.push(format!(
                "{name}: export: {}",
                String::from_utf8_lossy(&e.stderr)
            ));
            continue;
        }
        let errors = ffmpeg_errors(&mp4);
        let playable = errors.is_empty() && ffprobe(&mp4).duration > 0.0;
        let _ = std::fs::remove_file(&mp4);
        if !playable {
            out.corrupted.push(format!("{name}: ffmpeg: {errors}"));
            continue;
        }
        let mut preroll_ms = (m.preroll_secs * 1000.0).round() as u64;
        for f in &m.fragments {
            let ms = f.duration_ms.unwrap_or(0);
            if preroll_ms >= ms && ms > 0 {
                preroll_ms -= ms;
            } else {
                *after_trigger.entry(f.sha256.clone()).or_default() += 1;
            }
        }
        found.entry(m.recording_id.clone()).or_default().push((
            m.status.as_str().to_string(),
            m.duration_secs - m.preroll_secs,
            m.preroll_secs,
        ));
    }
    for s in started {
        let row = out.rows.entry(s.moment).or_default();
        row.recordings += 1;
        out.recordings += 1;
        let Some(copies) = found.get(&s.id) else {
            out.lost
                .push(format!("{} ({}): nowhere", s.id, s.moment.name()));
            continue;
        };
        if copies.len() > 1 {
            out.duplicated += copies.len() as u32 - 1;
        }
        let (status, secs, preroll) = &copies[0];
        // Every recording was started with a whole pre-roll.
        if *preroll < PREROLL_SECS - FRAGMENT_SECS / 2.0 {
            out.lost.push(format!(
                "{} ({}): a pre-roll of {preroll:.2} s, {PREROLL_SECS} s was there",
                s.id,
                s.moment.name()
            ));
        }
        if status == "complete" {
            out.complete += 1;
            row.complete += 1;
        } else {
            out.interrupted += 1;
            row.interrupted += 1;
        }
        // An interruption costs at most the fragment being written; a clean stop nothing.
        let allowed = if s.stopped && status == "complete" {
            0.0
        } else {
            FRAGMENT_SECS
        };
        if *secs < s.wall_secs - allowed - SLACK_SECS {
            out.lost.push(format!(
                "{} ({}): {secs:.2} s recorded after the trigger, {:.2} s ran",
                s.id,
                s.moment.name(),
                s.wall_secs
            ));
        }
    }
    out.duplicated += after_trigger
        .values()
        .map(|n| n.saturating_sub(1))
        .sum::<u32>();
    let strays: Vec<&String> = found
        .keys()
        .filter(|id| !started.iter().any(|s| &s.id == *id))
        .collect();
    if !strays.is_empty() {
        // After a power cut, a start may have been answered without the suite's note of it
        // reaching the host; anywhere else a recording nobody started is a fault.
        let msg = format!("recordings found that the suite did not start: {strays:?}");
        if strays_allowed {
            out.notes.push(msg);
        } else {
            out.failures.push(msg);
        }
    }
    out
}

/// Runs this binary in the VM lab with `args` (and `vm_args` for the lab), for at most
/// `limit_secs`; returns the outcome it printed. `power_cut`: the exit status 158 is expected
/// (the cut came while it ran).
fn in_vm(
    what: &str,
    vm_args: &[String],
    args: &[String],
    power_cut: Option<f64>,
    limit_secs: u64,
) -> Result<Outcome, String> {
    let vm = std::env::var("NEOFLIX_VM")
        .map_err(|_| "NEOFLIX_VM is not set: run through scripts/chaos".to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut c = Command::new(&vm);
    c.args(["-t", &limit_secs.to_string()]).args(vm_args);
    if let Some(after) = power_cut {
        c.args(["--power-cut-after", &format!("{after:.2}")]);
    }
    let out = c
        .arg("--")
        .arg(&exe)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{vm}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let code = out.status.code().unwrap_or(-1);
    if power_cut.is_some() {
        return match code {
            158 => Ok(Outcome::default()),
            0 => Err(format!("{what}: the boot ended before the power cut")),
            c => Err(format!("{what}: the VM exited {c}:\n{stdout}")),
        };
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(RESULT_PREFIX))
        .ok_or_else(|| format!("{what}: no outcome from the VM (exit {code}):\n{stdout}"))?;
    serde_json::from_str(line).map_err(|e| format!("{what}: {e}"))
}

// ---- power cuts -------------------------------------------------------------------------

/// Where the power-cut phase keeps box and server: the disk image's mount point in the guest.
const DISK_MOUNT: &str = "/mnt/nfx-chaos";
/// The box's control socket in the guest.
const GUEST_SOCKET: &str = "/run/nfx-chaos.sock";

/// The power cut at random moments, box and server on one ext4 disk in the VM lab; each next
/// boot recovers, the last one delivers and accounts.
fn power_cuts(o: &Options, rng: &mut Rng) -> Outcome {
    let lab = Lab::new();
    lab.pki(&[&lab.device]);
    let ingest = lab.ingest_config(64 << 20);
    lab.config(
        CAPTURE,
        PREROLL_SECS as u32,
        &format!("{RECORDINGS}{}", lab.upload_section(&ingest, &lab.device)),
    );
    // The box's and the server's directories are on the disk image; the lab's own files
    // (keys, certificates, configs, the suite's notes) stay on the shared directory, where the
    // suite reads the disk's through links.
    for (name, config) in [
        ("ring", "neoflixd.toml"),
        ("recordings", "neoflixd.toml"),
        ("server", "ingest.toml"),
    ] {
        let on_disk = Path::new(DISK_MOUNT).join(name);
        let text = std::fs::read_to_string(lab.path(config)).unwrap();
        let text = text.replace(
            &format!("\"{}\"", lab.path(name).display()),
            &format!("\"{}\"", on_disk.display()),
        );
        std::fs::write(lab.path(config), text).unwrap();
        std::os::unix::fs::symlink(&on_disk, lab.path(name)).unwrap();
    }
    // A Unix socket cannot live on the 9p share: the guest's /run holds it.
    let text = std::fs::read_to_string(lab.path("neoflixd.toml")).unwrap();
    let text = text.replace(
        &format!("\"{}\"", lab.path("control.sock").display()),
        &format!("\"{GUEST_SOCKET}\""),
    );
    std::fs::write(lab.path("neoflixd.toml"), text).unwrap();
    std::os::unix::fs::symlink(GUEST_SOCKET, lab.path("control.sock")).unwrap();
    std::fs::write(lab.path("ingest.addr"), &ingest.addr).unwrap();
    drop(ingest);
    let vm_args = power_cut_vm_args(&lab);
    let mut outcome = Outcome::default();
    let began = Instant::now();
    let mut cuts = 0;
    for _ in 0..o.power_cuts {
        if over(o, began) {
            break;
        }
        // From the command's start, both programs and a whole pre-roll take 5 s or more in the
        // emulated guest; the cut lands in the pre-roll, a recording, its finalize or its
        // upload (at 4–12 s, 18 of 25 cuts came before the first recording).
        let after = 6.0 + rng.below(10000) as f64 / 1000.0;
        let args = vec![
            "--power-cut-boot".into(),
            lab.root().display().to_string(),
            "--seed".into(),
            rng.next().max(1).to_string(),
        ];
        match in_vm("a power cut", &vm_args, &args, Some(after), 300) {
            Ok(_) => cuts += 1,
            Err(e) => outcome.failures.push(e),
        }
    }
    outcome.merge(power_cut_last_boot(
        &lab,
        &vm_args,
        900 + 10 * u64::from(o.power_cuts),
    ));
    outcome.rows.entry(Moment::PowerCut).or_default().events += cuts;
    // A few cuts may all come before a recording; many may not.
    if outcome.recordings == 0 && cuts >= 10 {
        outcome.failures.push(format!(
            "power cuts: none of {cuts} boots reached a recording before its cut"
        ));
    }
    outcome
}

/// The VM lab's arguments for a power-cut lab: its disk image, mounted, and the lab shared.
fn power_cut_vm_args(lab: &Lab) -> Vec<String> {
    vec![
        "--disk".into(),
        lab.path("disk.img").display().to_string(),
        "--disk-size".into(),
        "512M".into(),
        "--mount-disk".into(),
        DISK_MOUNT.into(),
        "-s".into(),
        lab.root().display().to_string(),
    ]
}

/// The boot after the cuts (delivery, copies to the share), then the accounting here. A boot
/// whose share did not mount (the VM lab under load once answered "Device or resource busy")
/// gives no outcome and is tried again: the cuts' work is on the disk image and the share.
fn power_cut_last_boot(lab: &Lab, vm_args: &[String], limit: u64) -> Outcome {
    let mut outcome = Outcome::default();
    let args = vec!["--power-cut-final".into(), lab.root().display().to_string()];
    let mut last = None;
    for attempt in 1..=3 {
        match in_vm("the boot after the power cuts", vm_args, &args, None, limit) {
            Ok(o) => {
                outcome.merge(o);
                outcome.merge(power_cut_account(lab));
                last = None;
                break;
            }
            Err(e) => {
                eprintln!("chaos: the boot after the power cuts, attempt {attempt}: {e}");
                last = Some(e);
            }
        }
    }
    if let Some(e) = last {
        outcome.failures.push(e);
    }
    outcome
}

/// Appends a line to one of the suite's notes in the shared lab directory: the 9p share writes
/// through to the host at once, so the note survives the guest's power cut.
fn note(lab: &Lab, file: &str, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(lab.path(file))
        .unwrap();
    writeln!(f, "{line}").unwrap();
}

/// Starts the server of a power-cut lab (its storage on the disk image).
fn power_cut_server(lab: &Lab) -> Ingest {
    let addr = std::fs::read_to_string(lab.path("ingest.addr")).unwrap();
    let mut ingest = Ingest::from_config(lab.path("ingest.toml"), addr, lab.path("ingest.log"));
    ingest.start();
    ingest
}

/// One boot: server and box start (recovering), then recordings one after another until the
/// power goes. Each start, each second of each recording and each stop is noted on the share.
fn power_cut_boot(dir: &Path, rng: &mut Rng) {
    let lab = Lab::at(dir, "room-e2e");
    for sub in ["ring", "recordings", "server"] {
        std::fs::create_dir_all(Path::new(DISK_MOUNT).join(sub)).unwrap();
    }
    let _ingest = power_cut_server(&lab);
    let mut d = lab.start();
    wait_preroll(&mut d);
    loop {
        let (id, at) = start(&d);
        note(&lab, "started.log", &id);
        let length = rng.millis(500, 4000);
        while at.elapsed() < length {
            std::thread::sleep(Duration::from_millis(100));
            note(
                &lab,
                "progress.log",
                &format!("{id} {:.3}", at.elapsed().as_secs_f64()),
            );
        }
        let wall = at.elapsed().as_secs_f64();
        if stop(&mut d) {
            note(&lab, "stopped.log", &format!("{id} {wall:.3}"));
        }
        std::thread::sleep(rng.millis(0, 1500));
        wait_preroll(&mut d);
    }
}

/// The boot after the last cut: recovery, delivery, then the accounting of every recording
/// the boots started.
fn power_cut_final(dir: &Path) -> Outcome {
    let lab = Lab::at(dir, "room-e2e");
    // Without the share, the notes of the starts are not there and nothing would reach the
    // host: say so at once, for the host to boot again.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let shared = mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(&*dir.to_string_lossy()));
    if !shared {
        eprintln!(
            "chaos: {} is not shared into this boot (its writes would stay in the guest)",
            dir.display()
        );
        std::process::exit(3);
    }
    let mut ingest = power_cut_server(&lab);
    let mut tally = Tally::default();
    deliver_everything(&lab, &mut ingest, &mut tally);
    drop(ingest);
    // The server's storage and whatever the box still holds, through the share: the host
    // accounts for them (under emulation, checking a hundred cuts' recordings outran the
    // VM lab's time limit).
    for (from, to) in [("server", POWER_CUT_SERVER), ("recordings", POWER_CUT_LEFT)] {
        let to = lab.path(to);
        std::fs::create_dir_all(&to).unwrap();
        sh(&[
            "cp",
            "-a",
            &format!("{}/.", Path::new(DISK_MOUNT).join(from).display()),
            &to.display().to_string(),
        ]);
    }
    let mut outcome = Outcome::default();
    tally.into_outcome(&mut outcome);
    outcome
}

/// Where the last boot leaves copies of the server's storage and of what the box still holds.
const POWER_CUT_SERVER: &str = "server-copy";
const POWER_CUT_LEFT: &str = "recordings-copy";

/// On the host, after the last boot: every recording the boots started, from their notes,
/// accounted for in the copies the last boot left.
fn power_cut_account(lab: &Lab) -> Outcome {
    // The lab's links into the disk image lead nowhere here: the copies stand in.
    let box_dir = lab.path("recordings");
    let _ = std::fs::remove_file(&box_dir);
    if let Err(e) = std::fs::rename(lab.path(POWER_CUT_LEFT), &box_dir) {
        return Outcome {
            failures: vec![format!(
                "power cuts: the last boot left no copy of the box: {e}"
            )],
            ..Outcome::default()
        };
    }
    let read = |f: &str| std::fs::read_to_string(lab.path(f)).unwrap_or_default();
    let mut wall: BTreeMap<String, f64> = BTreeMap::new();
    for line in read("progress.log").lines() {
        if let Some((id, secs)) = line.split_once(' ')
            && let Ok(secs) = secs.parse::<f64>()
        {
            let w = wall.entry(id.to_string()).or_default();
            *w = w.max(secs);
        }
    }
    let mut stopped: BTreeMap<String, f64> = BTreeMap::new();
    for line in read("stopped.log").lines() {
        if let Some((id, secs)) = line.split_once(' ')
            && let Ok(secs) = secs.parse::<f64>()
        {
            stopped.insert(id.to_string(), secs);
        }
    }
    let started: Vec<Started> = read("started.log")
        .lines()
        .map(|id| Started {
            id: id.to_string(),
            moment: Moment::PowerCut,
            wall_secs: stopped
                .get(id)
                .or(wall.get(id))
                .copied()
                .unwrap_or_default(),
            stopped: stopped.contains_key(id),
        })
        .collect();
    account(lab, &started, &lab.path(POWER_CUT_SERVER), true)
}

// ---- network ----------------------------------------------------------------------------

/// Runs a command, failing loudly: the network set-up must work for the phase to mean anything.
fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    assert!(
        out.status.success(),
        "{}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The box's network namespace and the veth pair to the server's end.
struct Veth;

impl Veth {
    fn up() -> Veth {
        let _ = Command::new("ip")
            .args(["netns", "del", NETNS])
            .stderr(Stdio::null())
            .status();
        sh(&["modprobe", "veth"]);
        sh(&["modprobe", "sch_netem"]);
        sh(&["ip", "netns", "add", NETNS]);
        sh(&[
            "ip", "link", "add", "nfx-srv", "type", "veth", "peer", "name", "nfx-box",
        ]);
        sh(&["ip", "link", "set", "nfx-box", "netns", NETNS]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{SERVER_IP}/24"),
            "dev",
            "nfx-srv",
        ]);
        sh(&["ip", "link", "set", "nfx-srv", "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", NETNS];
            all.extend(args);
            sh(&all);
        };
        inside(&[
            "ip",
            "addr",
            "add",
            &format!("{BOX_IP}/24"),
            "dev",
            "nfx-box",
        ]);
        inside(&["ip", "link", "set", "nfx-box", "up"]);
        inside(&["ip", "link", "set", "lo", "up"]);
        Veth
    }

    /// Both directions get `netem` with `args` (none: a clean link).
    fn shape(&self, args: &[String]) {
        for (ns, dev) in [(None, "nfx-srv"), (Some(NETNS), "nfx-box")] {
            let mut all: Vec<String> = Vec::new();
            if let Some(ns) = ns {
                all.extend(["ip", "netns", "exec", ns].map(String::from));
            }
            all.extend(["tc", "qdisc", "replace", "dev", dev, "root", "netem"].map(String::from));
            if args.is_empty() {
                all.extend(["delay", "0ms"].map(String::from));
            } else {
                all.extend(args.iter().cloned());
            }
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            sh(&all);
        }
    }

    /// The link cut (down) or back.
    fn link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        sh(&["ip", "link", "set", "nfx-srv", state]);
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", "nfx-srv"]).status();
        let _ = Command::new("ip").args(["netns", "del", NETNS]).status();
    }
}

/// One network condition, drawn at random: what it does, and netem's arguments (`None`: the
/// link is cut).
fn condition(rng: &mut Rng) -> (String, Option<Vec<String>>) {
    let args = |s: String| Some(s.split_whitespace().map(String::from).collect());
    match rng.below(6) {
        0 => {
            let loss = 1 + rng.below(30);
            (format!("loss {loss} %"), args(format!("loss {loss}%")))
        }
        1 => {
            let delay = 50 + rng.below(1950);
            let jitter = rng.below(delay / 2 + 1);
            (
                format!("delay {delay} ms ± {jitter} ms"),
                args(format!("delay {delay}ms {jitter}ms distribution normal")),
            )
        }
        2 => {
            let delay = 20 + rng.below(200);
            (
                format!("reordering 25 % of packets, others delayed {delay} ms"),
                args(format!("delay {delay}ms reorder 25% 50%")),
            )
        }
        3 => {
            let mbit = 1 + rng.below(10);
            (
                format!("bandwidth {mbit} Mbit/s"),
                args(format!("rate {mbit}mbit")),
            )
        }
        4 => ("link cut".into(), None),
        _ => ("clean".into(), Some(Vec::new())),
    }
}

/// The network phase: the soak in the VM lab, which copies its lab (keys, the server's
/// storage, anything left on the box) and its starts to a shared directory; the accounting
/// here, at the host's speed (under emulation it took longer than an hour's soak).
fn network_chaos(o: &Options, rng: &mut Rng) -> Outcome {
    let shared = tempfile::Builder::new()
        .prefix("neoflix-chaos-net")
        .tempdir()
        .expect("tempdir");
    let mut args = vec![
        "--network-guest".to_string(),
        shared.path().display().to_string(),
        "--network-secs".into(),
        o.network_secs.to_string(),
        "--seed".into(),
        rng.next().max(1).to_string(),
    ];
    if let Some(m) = o.max_secs {
        args.extend(["--max-secs".into(), m.to_string()]);
    }
    let vm_args = vec!["-s".to_string(), shared.path().display().to_string()];
    // The soak, up to 300 s of delivery, and the copy through the share.
    let limit = o.network_secs + 1800;
    let mut outcome = match in_vm("network chaos", &vm_args, &args, None, limit) {
        Ok(o) => o,
        Err(e) => {
            return Outcome {
                failures: vec![format!("network chaos: {e}")],
                ..Outcome::default()
            };
        }
    };
    let started: Vec<Started> = match std::fs::read(shared.path().join(NETWORK_STARTED))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            outcome
                .failures
                .push(format!("network chaos: the guest's {NETWORK_STARTED}: {e}"));
            return outcome;
        }
    };
    let lab = Lab::at(&shared.path().join("lab"), "room-e2e");
    outcome.merge(account(&lab, &started, &lab.path("server"), false));
    outcome
}

/// The network phase's starts, left by the guest for the host's accounting.
const NETWORK_STARTED: &str = "started.json";

/// Box and server apart, netem between them changing every few seconds while recordings are
/// made, the server restarted now and then; then a clean network and delivery. What the
/// accounting needs goes to `out`.
fn network(o: &Options, rng: &mut Rng, out: &Path) -> Outcome {
    let veth = Veth::up();
    let mut lab = Lab::new();
    lab.pki(&[&lab.device]);
    let mut ingest = lab.ingest_config_at(SERVER_IP, 64 << 20, "");
    ingest.start();
    lab.config(
        CAPTURE,
        PREROLL_SECS as u32,
        &format!("{RECORDINGS}{}", lab.upload_section(&ingest, &lab.device)),
    );
    lab.netns = Some(NETNS.into());
    let mut tally = Tally::default();
    let mut d = lab.start();
    wait_preroll(&mut d);
    let began = Instant::now();
    let limit = Duration::from_secs(o.network_secs);
    let mut conditions: BTreeMap<&'static str, u32> = BTreeMap::new();
    let mut next_change = Instant::now();
    let mut cut = false;
    let mut server_restarts = 0;
    while began.elapsed() < limit && !over(o, began) {
        if Instant::now() >= next_change {
            let (what, netem) = condition(rng);
            if cut {
                veth.link(true);
                cut = false;
            }
            match netem {
                Some(args) => veth.shape(&args),
                None => {
                    veth.link(false);
                    cut = true;
                }
            }
            let kind = what.split_whitespace().next().unwrap_or("");
            let kind = match kind {
                "loss" => "loss",
                "delay" => "delay and jitter",
                "reordering" => "reordering",
                "bandwidth" => "bandwidth cap",
                "link" => "link cut",
                _ => "clean",
            };
            *conditions.entry(kind).or_default() += 1;
            next_change = Instant::now() + rng.millis(1000, 5000);
        }
        tally.event(Moment::Network);
        wait_preroll(&mut d);
        let (id, at) = start(&d);
        std::thread::sleep(rng.millis(500, 4000));
        let wall_secs = at.elapsed().as_secs_f64();
        let stopped = stop(&mut d);
        tally.started.push(Started {
            id,
            moment: Moment::Network,
            wall_secs,
            stopped,
        });
        if rng.below(4) == 0 {
            ingest.kill9();
            std::thread::sleep(rng.millis(0, 1000));
            ingest.start();
            server_restarts += 1;
        }
        std::thread::sleep(rng.millis(0, 1500));
    }
    if cut {
        veth.link(true);
    }
    veth.shape(&[]);
    tally.notes.push(format!(
        "network: {:.0} s of chaos, conditions {:?}, server restarts {server_restarts}",
        began.elapsed().as_secs_f64(),
        conditions
    ));
    finish(
        &lab,
        d,
        Duration::from_secs(300),
        "the network was clean",
        &mut tally,
    );
    drop(ingest);
    drop(veth);
    // What the host's accounting reads: the keys and CA to verify and open, the server's
    // storage, and whatever the box still holds (counted as undelivered).
    let copy = out.join("lab");
    std::fs::create_dir_all(&copy).unwrap();
    for part in ["keys", "ca", "server", "recordings"] {
        if lab.path(part).exists() {
            sh(&[
                "cp",
                "-a",
                &lab.path(part).display().to_string(),
                &copy.display().to_string(),
            ]);
        }
    }
    std::fs::write(
        out.join(NETWORK_STARTED),
        serde_json::to_vec(&tally.started).unwrap(),
    )
    .unwrap();
    let mut outcome = Outcome::default();
    // The events column counts network conditions; the accounting adds the recordings.
    tally.events.clear();
    tally.into_outcome(&mut outcome);
    outcome.rows.entry(Moment::Network).or_default().events = conditions.values().sum();
    outcome
}
