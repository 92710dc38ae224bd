//! The pre-roll ring: sealed fragments on storage, their keys in RAM only.
//!
//! A fragment a recording claims stays in the ring as a *kept* fragment (the recording has its
//! own link or copy of the sealed file and its own wrapped key) for as long as it is within the
//! pre-roll, so a recording started soon after a stop still gets its full pre-roll.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use neoflix_seal::DataKey;

use crate::{StoreError, fsutil};

/// The init segment of one capture stream, sealed in the ring directory.
#[derive(Debug)]
pub struct StreamInit {
    /// The stream id (one per pipeline run).
    pub stream: [u8; 16],
    /// The sealed file.
    pub path: PathBuf,
    /// Its data key, RAM only.
    pub key: DataKey,
}

/// One sealed fragment in the ring.
#[derive(Debug)]
pub struct RingEntry {
    /// Sequence number (unique for the daemon's lifetime).
    pub seq: u64,
    /// The stream it belongs to.
    pub stream: [u8; 16],
    /// The sealed file.
    pub path: PathBuf,
    /// Sealed size in bytes.
    pub size: u64,
    /// SHA-256 of the sealed bytes, hex.
    pub sha256: String,
    /// Its data key, RAM only.
    pub key: DataKey,
    /// Duration of video it holds.
    pub duration: Duration,
    /// Wall-clock time of its first frame.
    pub captured: SystemTime,
    /// The same moment on this machine's monotonic clock, which no one sets.
    pub began: Instant,
}

/// The ring of sealed pre-roll fragments.
pub struct Ring {
    dir: PathBuf,
    preroll: Duration,
    max_bytes: u64,
    entries: VecDeque<RingEntry>,
    inits: HashMap<[u8; 16], Arc<StreamInit>>,
    current: Option<[u8; 16]>,
    total: Duration,
    bytes: u64,
    /// Fragments up to this sequence number belong to a recording that has not claimed them yet
    /// (its storage failed): they are not evicted for age nor purged, only for `max_bytes`.
    held_through: Option<u64>,
    /// Fragments a recording has claimed, kept (sealed file and key) as the pre-roll of a next
    /// recording started soon after: twins, or a second resuscitation minutes later, each get
    /// their full pre-roll. Evicted by age like the unclaimed ones, so no key outlives the
    /// pre-roll by more than two fragments (the newest, see `keep_for_preroll`, and the oldest
    /// until it is wholly past), except while a recording has yet to claim them (storage
    /// failing or behind), when only `max_bytes` evicts them.
    kept: VecDeque<RingEntry>,
    kept_total: Duration,
    kept_bytes: u64,
    /// A recording has yet to claim kept fragments as its pre-roll: age does not evict them.
    hold_kept: bool,
    /// The last push found the ring's filesystem full and made room by evicting early.
    out_of_room: bool,
}

/// A write failed because the filesystem (or the user's quota on it) is full.
fn out_of_room(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Deletes a fragment's file. Already gone is fine: a claim that failed half-way may have moved
/// it into a recording.
fn delete(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(StoreError::io("remove evicted", path)(e))
        }
        _ => Ok(()),
    }
}

fn hex16(s: &[u8; 16]) -> String {
    s.iter().map(|b| format!("{b:02x}")).collect()
}

impl Ring {
    /// Opens the ring directory, deleting whatever an earlier run left there: those files are
    /// noise now (their keys died with that run) and pre-roll that never became a recording must
    /// not survive.
    pub fn open(
        dir: &Path,
        preroll: Duration,
        max_bytes: u64,
    ) -> Result<(Ring, usize), StoreError> {
        fsutil::create_private_dir(dir)?;
        let mut removed = 0;
        for e in fs::read_dir(dir).map_err(StoreError::io("list", dir))? {
            let e = e.map_err(StoreError::io("list", dir))?;
            if e.file_type().map(|t| t.is_file()).unwrap_or(false) {
                fs::remove_file(e.path()).map_err(StoreError::io("remove leftover", e.path()))?;
                removed += 1;
            }
        }
        Ok((
            Ring {
                dir: dir.to_owned(),
                preroll,
                max_bytes,
                entries: VecDeque::new(),
                inits: HashMap::new(),
                current: None,
                total: Duration::ZERO,
                bytes: 0,
                held_through: None,
                kept: VecDeque::new(),
                kept_total: Duration::ZERO,
                kept_bytes: 0,
                hold_kept: false,
                out_of_room: false,
            },
            removed,
        ))
    }

    /// Starts a new capture stream with its sealed init segment.
    pub fn begin_stream(
        &mut self,
        stream: [u8; 16],
        sealed_init: &[u8],
        key: DataKey,
    ) -> Result<(), StoreError> {
        let path = self.dir.join(format!("init-{}.nfx", hex16(&stream)));
        if let Err(e) = fs::write(&path, sealed_init) {
            // A partial file is nobody's: counted nowhere, it would stay.
            let _ = fs::remove_file(&path);
            return Err(StoreError::io("write", &path)(e));
        }
        self.inits
            .insert(stream, Arc::new(StreamInit { stream, path, key }));
        self.current = Some(stream);
        self.gc_inits();
        Ok(())
    }

    /// The init segment of `stream`, while the ring holds it.
    pub fn init(&self, stream: &[u8; 16]) -> Option<Arc<StreamInit>> {
        self.inits.get(stream).cloned()
    }

    /// Adds a sealed fragment of the current stream and evicts what falls out of the pre-roll.
    /// Returns the evicted sequence numbers. The newest fragment is never evicted here: the
    /// recorder decides about it first.
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        seq: u64,
        sealed: &[u8],
        key: DataKey,
        duration: Duration,
        captured: SystemTime,
        began: Instant,
    ) -> Result<Vec<u64>, StoreError> {
        let stream = self.current.ok_or_else(|| StoreError::Io {
            op: "push",
            path: self.dir.clone(),
            source: std::io::Error::other("fragment before any init segment"),
        })?;
        let path = self.dir.join(format!("frag-{seq:010}.nfx"));
        let mut evicted = Vec::new();
        // A filesystem smaller than `max_bytes` (a tmpfs sized for a shorter pre-roll, a disk
        // shared with something else) fills before the bound does: room is made the way the
        // bound makes it, oldest first, rather than the newest video dropped and every later
        // fragment with it.
        // The digest goes with the file (and the recording's link to it, or copy of it), so
        // the upload need not hash every fragment a second time.
        let sha256 = loop {
            match neoflix_format::files::write_with_digest(&path, sealed, 0o600) {
                Ok(sha) => break sha,
                Err(e) => {
                    // A partial file is nobody's: counted nowhere, it would stay.
                    let _ = fs::remove_file(&path);
                    if !out_of_room(&e) || !self.evict_oldest(&mut evicted)? {
                        return Err(StoreError::io("write", &path)(e));
                    }
                    self.out_of_room = true;
                }
            }
        };
        self.total += duration;
        self.bytes += sealed.len() as u64;
        self.entries.push_back(RingEntry {
            seq,
            stream,
            path,
            size: sealed.len() as u64,
            sha256: hex::encode(sha256),
            key,
            duration,
            captured,
            began,
        });
        // By age, among the fragments no recording waits for: the oldest go while the rest
        // still cover the pre-roll. Held ones are older (they lead the queue) and do not count:
        // the next recording's pre-roll stays the pre-roll, not everything since the failure.
        let held = |e: &RingEntry, h: Option<u64>| h.is_some_and(|h| e.seq <= h);
        let first_free = self
            .entries
            .iter()
            .position(|e| !held(e, self.held_through))
            .unwrap_or(self.entries.len());
        let mut free_total: Duration = self
            .entries
            .iter()
            .skip(first_free)
            .map(|e| e.duration)
            .sum();
        let keep = self.keep_for_preroll();
        while first_free + 1 < self.entries.len() {
            let oldest_free = self.entries[first_free].duration;
            if free_total.saturating_sub(oldest_free) < keep {
                break;
            }
            let e = self.remove_at(first_free).expect("index is valid");
            free_total = free_total.saturating_sub(e.duration);
            evicted.push(e.seq);
            delete(&e.path)?;
            // `e` drops here: its key is zeroized, the fragment is noise from now on.
        }
        self.evict_kept(&mut evicted)?;
        // By bytes, oldest first: kept fragments (safe in a recording already) before anything
        // unclaimed, then held or not: the ring's bound is absolute.
        while self.bytes + self.kept_bytes > self.max_bytes
            && let Some(e) = self.kept.pop_front()
        {
            self.kept_total = self.kept_total.saturating_sub(e.duration);
            self.kept_bytes -= e.size;
            evicted.push(e.seq);
            delete(&e.path)?;
        }
        while self.entries.len() > 1 && self.bytes > self.max_bytes {
            let e = self.pop_front().expect("len > 1");
            if held(&e, self.held_through) {
                log::error!(fragment = e.seq, max_bytes = self.max_bytes;
                    "ring full while the recordings storage fails: the oldest unclaimed fragment of a recording is lost");
            }
            evicted.push(e.seq);
            delete(&e.path)?;
        }
        // Cleared only once the ring holds its pre-roll again, not at the first write that
        // happens to fit: the status would come and go with each fragment's size.
        if self.duration() >= self.preroll {
            self.out_of_room = false;
        }
        self.gc_inits();
        Ok(evicted)
    }

    /// Evicts the oldest fragment, kept ones first, to make room on a full filesystem; false
    /// when there is nothing left that may go. Never one a recording has yet to claim: for
    /// pre-roll nobody asked for, the new fragment is refused instead (`max_bytes` alone may
    /// take those).
    fn evict_oldest(&mut self, evicted: &mut Vec<u64>) -> Result<bool, StoreError> {
        let e = if let Some(e) = self.kept.pop_front() {
            self.kept_total = self.kept_total.saturating_sub(e.duration);
            self.kept_bytes -= e.size;
            e
        } else if self
            .entries
            .front()
            .is_some_and(|e| self.held_through.is_none_or(|h| e.seq > h))
        {
            self.pop_front().expect("front exists")
        } else {
            return Ok(false);
        };
        evicted.push(e.seq);
        delete(&e.path)?;
        Ok(true)
    }

    /// Whether the ring's filesystem was found full and the ring has not held its pre-roll
    /// since: older fragments were evicted early to make room.
    pub fn out_of_room(&self) -> bool {
        self.out_of_room
    }

    /// The ring's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Evicts kept fragments by age: the oldest goes while everything newer still covers the
    /// pre-roll, unless a recording has yet to claim them.
    fn evict_kept(&mut self, evicted: &mut Vec<u64>) -> Result<(), StoreError> {
        if self.hold_kept {
            return Ok(());
        }
        let keep = self.keep_for_preroll();
        while let Some(oldest) = self.kept.front() {
            let newer = self.kept_total.saturating_sub(oldest.duration) + self.total;
            if newer < keep {
                break;
            }
            let e = self.kept.pop_front().expect("front exists");
            self.kept_total = self.kept_total.saturating_sub(e.duration);
            self.kept_bytes -= e.size;
            evicted.push(e.seq);
            delete(&e.path)?;
            // `e` drops here: its key is zeroized.
        }
        Ok(())
    }

    /// A recording has claimed fragment `seq` (a copy or a second link of its sealed file):
    /// the ring keeps it as pre-roll for a next recording, for as long as it is within the
    /// pre-roll. Already kept, or no longer in the ring: nothing to do. Never fails: the claim
    /// is done, and a file the eviction could not delete is only logged (the next start wipes
    /// the ring).
    pub fn keep(&mut self, seq: u64) {
        if self.kept.iter().any(|e| e.seq == seq) {
            return;
        }
        let Ok(e) = self.take(seq) else { return };
        self.kept_total += e.duration;
        self.kept_bytes += e.size;
        self.kept.push_back(e);
        let mut evicted = Vec::new();
        if let Err(e) = self.evict_kept(&mut evicted) {
            log::error!("ring: {e}");
        }
        if !evicted.is_empty() {
            log::debug!(fragments = format!("{evicted:?}").as_str(); "kept fragments evicted from ring, keys zeroized");
        }
    }

    /// Whether kept fragments wait for a recording to claim them as its pre-roll: while they do,
    /// age does not evict them. Released, those past the pre-roll go at once.
    pub fn hold_kept(&mut self, hold: bool) -> Result<(), StoreError> {
        self.hold_kept = hold;
        let mut evicted = Vec::new();
        self.evict_kept(&mut evicted)
    }

    /// What age eviction leaves: the pre-roll and the newest fragment. A recording's pre-roll
    /// is counted back from the last fragment the recorder had seen when it decided, and the
    /// ring may hold one more by the time the start reaches storage (the one-hour network soak
    /// found that race under load): without it, the pre-roll came a fragment short.
    fn keep_for_preroll(&self) -> Duration {
        self.preroll + self.entries.back().map_or(Duration::ZERO, |e| e.duration)
    }

    /// The oldest fragment within the pre-roll counted back from `through` (the newest with
    /// `None`): where a recording triggered after it begins. Newer ones (already here when the
    /// trigger's news came) follow the trigger; older ones may be in the ring, held for
    /// recordings still to claim them, and are not this one's.
    pub fn preroll_start(&self, through: Option<u64>) -> Option<u64> {
        let mut total = Duration::ZERO;
        let mut start = None;
        // Newest first, kept and unclaimed together: an unclaimed one older than the last
        // recording's pre-roll may still be here (held while that recording was open).
        let mut all: Vec<&RingEntry> = self
            .entries
            .iter()
            .chain(self.kept.iter())
            .filter(|e| through.is_none_or(|t| e.seq <= t))
            .collect();
        all.sort_unstable_by_key(|e| std::cmp::Reverse(e.seq));
        for e in all {
            if total >= self.preroll {
                break;
            }
            total += e.duration;
            start = Some(e.seq);
        }
        start
    }

    /// The oldest fragment, kept or unclaimed, after `seq` (from the oldest with `None`): what
    /// a recording that has claimed up to `seq` claims next.
    pub fn next_after(&self, seq: Option<u64>) -> Option<&RingEntry> {
        self.kept
            .iter()
            .chain(self.entries.iter())
            .find(|e| seq.is_none_or(|s| e.seq > s))
    }

    fn remove_at(&mut self, i: usize) -> Option<RingEntry> {
        let e = self.entries.remove(i)?;
        self.total = self.total.saturating_sub(e.duration);
        self.bytes -= e.size;
        Some(e)
    }

    /// Takes out and forgets every fragment up to `seq` (a recording given up): their files are
    /// deleted and their keys zeroized.
    pub fn discard_through(&mut self, seq: u64) -> Result<Vec<u64>, StoreError> {
        let mut gone = Vec::new();
        while self.entries.front().is_some_and(|e| e.seq <= seq) {
            let e = self.pop_front().expect("front exists");
            gone.push(e.seq);
            delete(&e.path)?;
        }
        self.gc_inits();
        Ok(gone)
    }

    fn pop_front(&mut self) -> Option<RingEntry> {
        let e = self.entries.pop_front()?;
        self.total = self.total.saturating_sub(e.duration);
        self.bytes -= e.size;
        Some(e)
    }

    fn gc_inits(&mut self) {
        let live: Vec<[u8; 16]> = self
            .kept
            .iter()
            .chain(self.entries.iter())
            .map(|e| e.stream)
            .collect();
        let current = self.current;
        self.inits.retain(|s, init| {
            let keep = Some(*s) == current || live.contains(s);
            if !keep {
                let _ = fs::remove_file(&init.path);
            }
            keep
        });
    }

    /// Keeps fragments up to `seq` (every fragment, with `u64::MAX`) for a recording that has
    /// yet to claim them: age no longer evicts them and [`Ring::purge`] leaves them; only
    /// `max_bytes` does. `None` lets them go as pre-roll again.
    pub fn hold_through(&mut self, seq: Option<u64>) {
        self.held_through = seq;
    }

    /// The newest fragment's sequence number.
    pub fn newest_seq(&self) -> Option<u64> {
        self.entries.back().map(|e| e.seq)
    }

    fn take_all(&mut self) -> Vec<RingEntry> {
        let mut out = Vec::with_capacity(self.entries.len());
        while let Some(e) = self.pop_front() {
            out.push(e);
        }
        out
    }

    /// Fragment `seq`, kept or unclaimed, while the ring holds it.
    pub fn get(&self, seq: u64) -> Option<&RingEntry> {
        self.kept
            .iter()
            .chain(self.entries.iter())
            .find(|e| e.seq == seq)
    }

    /// Takes one unclaimed fragment out of the ring; its file stays where it is.
    fn take(&mut self, seq: u64) -> Result<RingEntry, StoreError> {
        let pos = self
            .entries
            .iter()
            .position(|e| e.seq == seq)
            .ok_or(StoreError::NotInRing { seq })?;
        let e = self.entries.remove(pos).expect("position is valid");
        self.total = self.total.saturating_sub(e.duration);
        self.bytes -= e.size;
        Ok(e)
    }

    /// Deletes every fragment and init segment not held for a recording and forgets their keys
    /// (privacy, camera restart).
    pub fn purge(&mut self) -> Result<(), StoreError> {
        let held = self.held_through;
        let (keep, drop): (Vec<RingEntry>, Vec<RingEntry>) = self
            .take_all()
            .into_iter()
            .partition(|e| held.is_some_and(|h| e.seq <= h));
        for e in keep {
            self.total += e.duration;
            self.bytes += e.size;
            self.entries.push_back(e);
        }
        for e in drop {
            fs::remove_file(&e.path).map_err(StoreError::io("remove", &e.path))?;
        }
        // Kept ones a recording has yet to claim as its pre-roll stay, like held ones.
        while !self.hold_kept
            && let Some(e) = self.kept.pop_front()
        {
            self.kept_total = self.kept_total.saturating_sub(e.duration);
            self.kept_bytes -= e.size;
            delete(&e.path)?;
        }
        self.current = None;
        self.gc_inits();
        Ok(())
    }

    /// Video held, kept fragments included: the pre-roll a recording started now would get.
    pub fn duration(&self) -> Duration {
        self.total + self.kept_total
    }

    /// Sealed bytes held, kept fragments included.
    pub fn bytes(&self) -> u64 {
        self.bytes + self.kept_bytes
    }

    /// Number of fragments held, kept ones included.
    pub fn len(&self) -> usize {
        self.entries.len() + self.kept.len()
    }

    /// Whether the ring is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.kept.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use neoflix_seal::{Kind, ObjectId, seal};

    fn sealed(stream: [u8; 16], seq: u64, kind: Kind, len: usize) -> (DataKey, Vec<u8>) {
        seal(&ObjectId { stream, seq, kind }, &vec![1u8; len]).unwrap()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        v.sort();
        v
    }

    /// Pushes a 1 s fragment `seq` of stream 1; what it evicted.
    fn push(ring: &mut Ring, seq: u64) -> Vec<u64> {
        let (k, s) = sealed([1; 16], seq, Kind::Fragment, 100);
        ring.push(
            seq,
            &s,
            k,
            Duration::from_secs(1),
            SystemTime::now(),
            std::time::Instant::now(),
        )
        .unwrap()
    }

    /// A ring in `dir` keeping 3 s of pre-roll, stream 1 begun.
    fn streaming_ring(dir: &Path) -> Ring {
        let (mut ring, _) = Ring::open(dir, Duration::from_secs(3), 1 << 30).unwrap();
        let (k, s) = sealed([1; 16], 0, Kind::Init, 10);
        ring.begin_stream([1; 16], &s, k).unwrap();
        ring
    }

    #[test]
    fn evicts_by_seconds_and_deletes_the_files() {
        let d = tempfile::tempdir().unwrap();
        let mut ring = streaming_ring(d.path());
        let mut evicted = Vec::new();
        for seq in 0..6 {
            evicted.extend(push(&mut ring, seq));
        }
        // The pre-roll and the newest fragment stay (see `keep_for_preroll`).
        assert_eq!(evicted, vec![0, 1]);
        assert_eq!(ring.duration(), Duration::from_secs(4));
        assert_eq!(files(d.path()).len(), 5, "{:?}", files(d.path()));
        assert!(!d.path().join("frag-0000000000.nfx").exists());
    }

    #[test]
    fn a_fragment_carries_the_digest_of_its_bytes_and_never_an_older_files() {
        let d = tempfile::tempdir().unwrap();
        let mut ring = streaming_ring(d.path());
        // What an earlier run left at the next fragment's name, with a record of its own of
        // the same size as the fragment to come.
        let path = d.path().join("frag-0000000007.nfx");
        let (_, next) = sealed([1; 16], 7, Kind::Fragment, 100);
        let stale = vec![0u8; next.len()];
        neoflix_format::files::write_with_digest(&path, &stale, 0o600).unwrap();
        push(&mut ring, 7);
        let entry = ring.entries.back().unwrap();
        let (bytes, recorded) =
            neoflix_format::files::read_regular_recorded(&entry.path, 1 << 20).unwrap();
        assert_ne!(bytes, stale);
        assert_eq!(entry.sha256, neoflix_seal::sha256_hex(&bytes));
        // Where this filesystem keeps user attributes, the record is the new bytes' digest.
        if let Some(sha) = recorded {
            assert_eq!(hex::encode(sha), entry.sha256);
        }
    }

    #[test]
    fn claimed_fragments_are_kept_within_the_preroll_and_go_first_when_bytes_run_out() {
        let d = tempfile::tempdir().unwrap();
        let mut ring = streaming_ring(d.path());
        ring.hold_through(Some(u64::MAX));
        for seq in 0..3 {
            push(&mut ring, seq);
            ring.keep(seq);
            ring.keep(seq); // twice is once
        }
        assert_eq!(ring.duration(), Duration::from_secs(3));
        assert_eq!(ring.next_after(None).map(|e| e.seq), Some(0));
        assert_eq!(ring.next_after(Some(1)).map(|e| e.seq), Some(2));
        // Newer video pushes the oldest kept fragment out, its file with it, once the pre-roll
        // and the newest fragment are there without it.
        assert!(push(&mut ring, 3).is_empty());
        let evicted = push(&mut ring, 4);
        assert_eq!(evicted, vec![0]);
        assert!(!d.path().join("frag-0000000000.nfx").exists());
        assert_eq!(ring.duration(), Duration::from_secs(4));
        // Held for a recording that has yet to claim them: none go, until released.
        ring.hold_kept(true).unwrap();
        assert!(push(&mut ring, 5).is_empty());
        assert_eq!(ring.duration(), Duration::from_secs(5));
        ring.hold_kept(false).unwrap();
        assert_eq!(ring.next_after(None).map(|e| e.seq), Some(2));
        assert_eq!(ring.duration(), Duration::from_secs(4));
        // Out of bytes: kept fragments go before unclaimed ones.
        ring.max_bytes = ring.bytes() - 1;
        let evicted = push(&mut ring, 6);
        assert!(evicted.contains(&2), "{evicted:?}");
        assert!(ring.next_after(None).is_some_and(|e| e.seq >= 3));
        // Privacy: kept ones go too, unless a recording has yet to claim them.
        ring.hold_through(None);
        push(&mut ring, 7);
        ring.keep(7);
        ring.hold_kept(true).unwrap();
        ring.purge().unwrap();
        assert!(ring.get(7).is_some(), "held for a recording");
        ring.hold_kept(false).unwrap();
        ring.purge().unwrap();
        assert!(ring.is_empty());
        assert!(files(d.path()).is_empty(), "{:?}", files(d.path()));
    }

    #[test]
    fn evicts_by_bytes_but_keeps_the_newest() {
        let d = tempfile::tempdir().unwrap();
        let (mut ring, _) = Ring::open(d.path(), Duration::from_secs(100), 250).unwrap();
        let (k, s) = sealed([1; 16], 0, Kind::Init, 10);
        ring.begin_stream([1; 16], &s, k).unwrap();
        for seq in 0..4 {
            let (k, s) = sealed([1; 16], seq, Kind::Fragment, 100);
            ring.push(
                seq,
                &s,
                k,
                Duration::from_secs(1),
                SystemTime::now(),
                std::time::Instant::now(),
            )
            .unwrap();
        }
        assert!(ring.bytes() <= 250 || ring.len() == 1);
        assert_eq!(ring.len(), 1);
        let (k, s) = sealed([1; 16], 9, Kind::Fragment, 1000);
        ring.push(
            9,
            &s,
            k,
            Duration::from_secs(1),
            SystemTime::now(),
            std::time::Instant::now(),
        )
        .unwrap();
        assert_eq!(
            ring.len(),
            1,
            "the newest stays even when alone over the limit"
        );
    }

    #[test]
    fn open_wipes_leftovers_and_purge_empties() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("frag-0000000001.nfx"), b"old").unwrap();
        let (mut ring, removed) = Ring::open(d.path(), Duration::from_secs(10), 1 << 30).unwrap();
        assert_eq!(removed, 1);
        let (k, s) = sealed([1; 16], 0, Kind::Init, 10);
        ring.begin_stream([1; 16], &s, k).unwrap();
        let (k, s) = sealed([1; 16], 0, Kind::Fragment, 10);
        ring.push(
            0,
            &s,
            k,
            Duration::from_secs(1),
            SystemTime::now(),
            std::time::Instant::now(),
        )
        .unwrap();
        ring.purge().unwrap();
        assert!(files(d.path()).is_empty());
        assert!(ring.is_empty());
    }

    #[test]
    fn held_fragments_outlive_the_preroll_and_a_purge_but_not_max_bytes() {
        let d = tempfile::tempdir().unwrap();
        let (mut ring, _) = Ring::open(d.path(), Duration::from_secs(2), 1500).unwrap();
        let (k, s) = sealed([1; 16], 0, Kind::Init, 10);
        ring.begin_stream([1; 16], &s, k).unwrap();
        push(&mut ring, 0);
        ring.hold_through(Some(u64::MAX));
        for seq in 1..6 {
            assert!(push(&mut ring, seq).is_empty(), "held: nothing evicted");
        }
        assert_eq!(ring.next_after(None).unwrap().seq, 0);
        // Held through 3 (a stopped recording still owed them): what comes after is pre-roll
        // again and ages out as usual, without waiting for the held ones to go.
        ring.hold_through(Some(3));
        let mut aged = Vec::new();
        for seq in 6..9 {
            aged.extend(push(&mut ring, seq));
        }
        assert_eq!(
            aged,
            vec![4, 5],
            "pre-roll (and the newest fragment) after the held ones is still 2 s"
        );
        assert_eq!(ring.next_after(None).unwrap().seq, 0);
        assert_eq!(ring.discard_through(1).unwrap(), vec![0, 1]);
        assert_eq!(ring.next_after(None).unwrap().seq, 2);
        ring.purge().unwrap();
        assert_eq!((ring.len(), ring.newest_seq()), (2, Some(3)));
        // Bytes still bound a held ring: the oldest go first.
        let (k, s) = sealed([1; 16], 0, Kind::Init, 10);
        ring.begin_stream([1; 16], &s, k).unwrap();
        for seq in 10..24 {
            push(&mut ring, seq);
        }
        assert!(ring.bytes() <= 1500);
        assert!(ring.next_after(None).unwrap().seq > 0);
        ring.hold_through(None);
        ring.purge().unwrap();
        assert!(ring.is_empty());
    }

    #[test]
    fn old_stream_init_is_kept_while_its_fragments_are() {
        let d = tempfile::tempdir().unwrap();
        let (mut ring, _) = Ring::open(d.path(), Duration::from_secs(2), 1 << 30).unwrap();
        for (stream, base) in [([1u8; 16], 0u64), ([2u8; 16], 10)] {
            let (k, s) = sealed(stream, 0, Kind::Init, 10);
            ring.begin_stream(stream, &s, k).unwrap();
            let (k, s) = sealed(stream, base, Kind::Fragment, 10);
            ring.push(
                base,
                &s,
                k,
                Duration::from_secs(1),
                SystemTime::now(),
                std::time::Instant::now(),
            )
            .unwrap();
            assert!(ring.init(&[1; 16]).is_some());
        }
        // The pre-roll (2 s) and the newest fragment: stream 1's goes with the second after.
        for seq in [11, 12] {
            let (k, s) = sealed([2; 16], seq, Kind::Fragment, 10);
            ring.push(
                seq,
                &s,
                k,
                Duration::from_secs(1),
                SystemTime::now(),
                std::time::Instant::now(),
            )
            .unwrap();
        }
        assert!(
            ring.init(&[1; 16]).is_none(),
            "stream 1 has no fragments left"
        );
        ring.keep(0); // evicted: nothing to keep
        assert!(ring.get(0).is_none());
        assert_eq!(ring.get(11).unwrap().seq, 11);
    }
}
