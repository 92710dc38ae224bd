//! The chaos suite, first part (`scripts/chaos`, docs/reliability.md): the real `neoflixd`
//! (release build) killed with SIGKILL at random moments and restarted each time, and every
//! recording it started accounted for at the end: verified (signature, chain, every chunk
//! opened with the department key), exported and decoded by ffmpeg, present once, and as long
//! as the wall-clock time it ran less one fragment per interruption.
//!
//! The moments, drawn at random: filling the pre-roll after a start, at the trigger (within
//! 50 ms of `start`), mid-recording, during finalize (within 200 ms of `stop`), and during
//! recovery itself (within 300 ms of a restart that follows an interrupted recording).
//!
//! `--kills N` (20), `--seed S` (from the clock), `--max-secs T` (stop drawing kills after T
//! seconds). Prints a table and a last line
//! `chaos: N recordings, N complete, N interrupted, 0 lost, 0 corrupted, 0 duplicated`; exits
//! non-zero on any loss, corruption or duplicate.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use neoflix_control::Request;
use neoflix_e2e::{Lab, ffmpeg_errors, ffprobe};

const CAPTURE: &str = "source = \"test\"\nwidth = 320\nheight = 180\nfps = 15\nbitrate_kbps = 300\nx264_preset = \"ultrafast\"";
const PREROLL_SECS: f64 = 2.0;
const FRAGMENT_SECS: f64 = 1.0;
/// Timing slack in the duration check: the control round trip and the kill itself.
const SLACK_SECS: f64 = 0.5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Moment {
    FillingPreroll,
    AtTrigger,
    MidRecording,
    DuringFinalize,
    DuringRecovery,
}

impl Moment {
    fn name(self) -> &'static str {
        match self {
            Moment::FillingPreroll => "filling the pre-roll",
            Moment::AtTrigger => "at the trigger",
            Moment::MidRecording => "mid-recording",
            Moment::DuringFinalize => "during finalize",
            Moment::DuringRecovery => "during recovery",
        }
    }
}

/// A recording the suite started.
struct Started {
    id: String,
    moment: Moment,
    /// Wall-clock seconds from `start` to the kill or `stop`.
    wall_secs: f64,
    /// Whether it was stopped cleanly (it may still be interrupted by a kill in finalize).
    stopped: bool,
}

struct Options {
    kills: u32,
    seed: u64,
    max_secs: Option<u64>,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        kills: 20,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1,
        max_secs: None,
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
            "--seed" => o.seed = value("--seed")?.max(1),
            "--max-secs" => o.max_secs = Some(value("--max-secs")?),
            // cargo bench passes this; it is not ours.
            "--bench" => {}
            other => {
                return Err(format!(
                    "unknown option {other}: use --kills N, --seed S, --max-secs T"
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
    println!(
        "chaos: seed {} (give --seed {} to repeat this run)",
        o.seed, o.seed
    );
    let mut rng = Rng(o.seed);
    let lab = Lab::new();
    lab.config(CAPTURE, PREROLL_SECS as u32, "");
    let began = Instant::now();
    let mut started: Vec<Started> = Vec::new();
    let mut kills: BTreeMap<Moment, u32> = BTreeMap::new();
    // The longest wait from a (re)start to a whole pre-roll, and how many were over
    // pre-roll + 2 s.
    let (mut slowest_preroll, mut late_prerolls) = (0.0f64, 0u32);
    let mut last_interrupted = false;
    for _ in 0..o.kills {
        if o.max_secs.is_some_and(|m| began.elapsed().as_secs() >= m) {
            break;
        }
        let moment = match rng.next() % 5 {
            0 => Moment::FillingPreroll,
            1 => Moment::AtTrigger,
            2 => Moment::MidRecording,
            3 => Moment::DuringFinalize,
            _ if last_interrupted => Moment::DuringRecovery,
            _ => Moment::MidRecording,
        };
        *kills.entry(moment).or_default() += 1;
        let t0 = Instant::now();
        let mut d = lab.start();
        last_interrupted = false;
        match moment {
            Moment::FillingPreroll => std::thread::sleep(rng.millis(0, 1500)),
            Moment::DuringRecovery => std::thread::sleep(rng.millis(0, 300)),
            _ => {
                d.wait_for("a whole pre-roll", Duration::from_secs(60), |s| {
                    s.ready && s.preroll_secs >= PREROLL_SECS - 0.1
                });
                let took = t0.elapsed().as_secs_f64();
                slowest_preroll = slowest_preroll.max(took);
                if took > PREROLL_SECS + 2.0 {
                    late_prerolls += 1;
                }
                let start = Instant::now();
                let id = d
                    .ctl(Request::Start {})
                    .recording
                    .expect("start names the recording");
                let (stopped, wall_secs) = match moment {
                    Moment::AtTrigger => {
                        std::thread::sleep(rng.millis(0, 50));
                        (false, start.elapsed().as_secs_f64())
                    }
                    Moment::MidRecording => {
                        std::thread::sleep(rng.millis(300, 3000));
                        (false, start.elapsed().as_secs_f64())
                    }
                    _ => {
                        std::thread::sleep(rng.millis(500, 2000));
                        let wall = start.elapsed().as_secs_f64();
                        let stopped = d.ctl(Request::Stop {}).ok;
                        std::thread::sleep(rng.millis(0, 200));
                        (stopped, wall)
                    }
                };
                started.push(Started {
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
    // A last start: recovery runs, then a clean stop.
    let mut d = lab.start();
    d.wait_ready(Duration::from_secs(60));
    let code = d.terminate();
    if code != 0 {
        eprintln!("chaos: neoflixd exited {code} at the final clean stop");
    }
    account(&lab, &started, &kills, slowest_preroll, late_prerolls)
}

fn account(
    lab: &Lab,
    started: &[Started],
    kills: &BTreeMap<Moment, u32>,
    slowest_preroll: f64,
    late_prerolls: u32,
) -> ExitCode {
    let key = lab.key().display().to_string();
    let custody = lab.custody_args();
    // Every recording on the box, by id: its status and recorded seconds after the trigger.
    let mut found: BTreeMap<String, Vec<(String, f64, f64)>> = BTreeMap::new();
    let mut corrupted = Vec::new();
    for dir in lab.recordings() {
        let name = dir.display().to_string();
        let m = match neoflix_format::verify(&dir) {
            Ok(v) => v.manifest,
            Err(e) => {
                corrupted.push(format!("{name}: {e}"));
                continue;
            }
        };
        let mut args = vec!["verify", name.as_str(), "--key", key.as_str()];
        args.extend(custody.iter().map(String::as_str));
        let out = neoflix_e2e::neoflix(&args);
        if !out.status.success() {
            corrupted.push(format!("{name}: {}", String::from_utf8_lossy(&out.stderr)));
            continue;
        }
        let mp4 = lab.path(&format!("{}.mp4", m.recording_id));
        let e = lab.export(&dir, &mp4);
        if !e.status.success() {
            corrupted.push(format!(
                "{name}: export: {}",
                String::from_utf8_lossy(&e.stderr)
            ));
            continue;
        }
        let errors = ffmpeg_errors(&mp4);
        if !errors.is_empty() || ffprobe(&mp4).duration <= 0.0 {
            corrupted.push(format!("{name}: ffmpeg: {errors}"));
            continue;
        }
        found.entry(m.recording_id.clone()).or_default().push((
            m.status.as_str().to_string(),
            m.duration_secs - m.preroll_secs,
            m.preroll_secs,
        ));
    }

    let mut lost = Vec::new();
    let mut duplicated = 0;
    let (mut complete, mut interrupted) = (0, 0);
    // Per moment: recordings, complete, interrupted.
    let mut table: BTreeMap<Moment, (u32, u32, u32)> = BTreeMap::new();
    for s in started {
        let row = table.entry(s.moment).or_default();
        row.0 += 1;
        let Some(copies) = found.get(&s.id) else {
            lost.push(format!("{} ({}): not on the box", s.id, s.moment.name()));
            continue;
        };
        if copies.len() > 1 {
            duplicated += copies.len() - 1;
        }
        let (status, secs, preroll) = &copies[0];
        // Every recording was started with a whole pre-roll.
        if *preroll < PREROLL_SECS - FRAGMENT_SECS / 2.0 {
            lost.push(format!(
                "{} ({}): a pre-roll of {preroll:.2} s, {PREROLL_SECS} s was there",
                s.id,
                s.moment.name()
            ));
        }
        if status == "complete" {
            complete += 1;
            row.1 += 1;
        } else {
            interrupted += 1;
            row.2 += 1;
        }
        // A kill costs at most the fragment being written; a clean stop nothing.
        let allowed = if s.stopped && status == "complete" {
            0.0
        } else {
            FRAGMENT_SECS
        };
        if *secs < s.wall_secs - allowed - SLACK_SECS {
            lost.push(format!(
                "{} ({}): {secs:.2} s recorded after the trigger, {:.2} s ran",
                s.id,
                s.moment.name(),
                s.wall_secs
            ));
        }
    }
    let strays = found
        .keys()
        .filter(|id| !started.iter().any(|s| &s.id == *id))
        .count();

    println!(
        "{:24} {:>6} {:>11} {:>9} {:>12}",
        "kill", "kills", "recordings", "complete", "interrupted"
    );
    for (moment, n) in kills {
        let (r, c, i) = table.get(moment).copied().unwrap_or_default();
        println!("{:24} {n:>6} {r:>11} {c:>9} {i:>12}", moment.name());
    }
    println!(
        "pre-roll whole again after a restart: slowest {slowest_preroll:.2} s; over {} s: {late_prerolls}",
        PREROLL_SECS + 2.0
    );
    if strays > 0 {
        println!("recordings on the box the suite did not start: {strays}");
    }
    for l in &lost {
        println!("LOST {l}");
    }
    for c in &corrupted {
        println!("CORRUPTED {c}");
    }
    println!(
        "chaos: {} recordings, {complete} complete, {interrupted} interrupted, {} lost, {} corrupted, {duplicated} duplicated",
        started.len(),
        lost.len(),
        corrupted.len()
    );
    if lost.is_empty() && corrupted.is_empty() && duplicated == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
