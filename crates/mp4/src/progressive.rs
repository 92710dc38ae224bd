//! The progressive writer: one init segment and its fragments in, one MP4 with `moov` first out.
//!
//! Two passes over the fragments, so that neither the writer nor its caller holds the file
//! twice. [`Progressive::push_fragment`] indexes a fragment (sample sizes, durations, flags and
//! where the bytes are) and keeps none of its bytes; [`Progressive::finish`] makes the cut,
//! builds `ftyp` + `moov` + the `mdat` header and returns a [`Layout`]; then
//! [`Layout::media`] gives, per fragment in the same order, the byte ranges to append.
//!
//! Memory: 16 bytes per sample plus 24 per chunk (one chunk per track run of a fragment) while
//! indexing — an hour of 30 fps video is about 2 MB — and the `moov` (about 12 bytes a sample)
//! from `finish` on. [`Layout::to_vec`] is the one-call form for data already in memory (the
//! browser): it allocates the output once, at its final size.

use crate::chapters::{Chapter, normalize};
use crate::fragment::parse_fragment;
use crate::init::{Handler, InitInfo, Track};
use crate::write::{MATRIX, Put, boxed, full};
use crate::{MAX_SAMPLES_PER_TRACK, Mp4Error};

/// Times closer than this are the same: a range's ends computed by subtraction (a stream's
/// start taken from a range in recording time) are off by a rounding error.
const EPSILON_SECS: f64 = 1e-6;

/// The movie timescale of `mvhd`, `tkhd` and `elst`: milliseconds.
const MOVIE_TIMESCALE: u32 = 1000;

/// What is kept of each sample while indexing.
#[derive(Debug, Clone, Copy)]
struct Entry {
    duration: u32,
    size: u32,
    cto: i32,
    sync: bool,
}

/// A run of samples of one track whose bytes are contiguous in one fragment.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    track: usize,
    fragment: usize,
    /// Offset of the first sample's bytes in the fragment.
    offset: usize,
    /// Index of the first sample in its track.
    first: usize,
    count: usize,
}

#[derive(Debug, Default)]
struct TrackIndex {
    /// Decode time of the first sample, in the track's timescale.
    first_dts: Option<u64>,
    /// Decode time just after the last sample.
    next_dts: u64,
    samples: Vec<Entry>,
}

/// Builds a progressive MP4 from an init segment and its fragments. See the module overview.
#[derive(Debug)]
pub struct Progressive {
    init: InitInfo,
    tracks: Vec<TrackIndex>,
    chunks: Vec<Chunk>,
    /// Length of each fragment pushed: the second pass must give the same ones.
    fragments: Vec<usize>,
    chapters: Vec<Chapter>,
    range: Option<(f64, f64)>,
    /// The fragment that was refused, if one was: from then on nothing is taken.
    refused: Option<usize>,
}

impl Progressive {
    /// A writer for the tracks of this init segment.
    pub fn new(init: &[u8]) -> Result<Progressive, Mp4Error> {
        let init = InitInfo::parse(init)?;
        let tracks = init.tracks.iter().map(|_| TrackIndex::default()).collect();
        Ok(Progressive {
            init,
            tracks,
            chunks: Vec::new(),
            fragments: Vec::new(),
            chapters: Vec::new(),
            range: None,
            refused: None,
        })
    }

    /// What the init segment says.
    pub fn init(&self) -> &InitInfo {
        &self.init
    }

    /// Chapters to write, their start in seconds from the first frame (before any cut).
    pub fn chapters(&mut self, chapters: &[Chapter]) -> &mut Self {
        self.chapters = normalize(chapters);
        self
    }

    /// Writes only `from_secs..to_secs` (seconds from the first frame): from the sync sample
    /// at or before `from_secs` to the last sample that starts before `to_secs`, every track cut
    /// at the same presentation times.
    pub fn range(&mut self, from_secs: f64, to_secs: f64) -> &mut Self {
        self.range = Some((from_secs, to_secs));
        self
    }

    /// Indexes the next fragment (`moof` + `mdat`, with or without `styp`); keeps none of its
    /// bytes. Fragments must come in decode order; a gap in decode time (a lost fragment) is
    /// kept as a gap by lengthening the sample before it, and a fragment that starts within the
    /// previous fragment's last sample shortens that sample.
    ///
    /// After an error the writer takes nothing more ([`Mp4Error::Refused`]): a fragment with
    /// several tracks may be indexed in part, and a later fragment would take its number.
    pub fn push_fragment(&mut self, fragment: &[u8]) -> Result<(), Mp4Error> {
        if let Some(fragment) = self.refused {
            return Err(Mp4Error::Refused { fragment });
        }
        let result = self.index_fragment(fragment);
        if result.is_err() {
            self.refused = Some(self.fragments.len());
        }
        result
    }

    fn index_fragment(&mut self, fragment: &[u8]) -> Result<(), Mp4Error> {
        let index = self.fragments.len();
        let parsed = parse_fragment(&self.init, fragment, index)?;
        for traf in parsed {
            let Some(t) = self.init.tracks.iter().position(|t| t.id == traf.track_id) else {
                continue; // parse_fragment refuses unknown tracks
            };
            let track_err = |problem| Mp4Error::Track {
                fragment: index,
                track: traf.track_id,
                problem,
            };
            if traf.samples.is_empty() {
                continue;
            }
            let ti = &mut self.tracks[t];
            let start = match (ti.first_dts, traf.base_decode_time) {
                (None, dts) => {
                    let dts = dts.unwrap_or(0);
                    ti.first_dts = Some(dts);
                    dts
                }
                (Some(_), None) => ti.next_dts,
                (Some(_), Some(dts)) => {
                    if dts < ti.next_dts {
                        // A fragment's last duration is the muxer's estimate (a live camera's
                        // next frame comes when it comes): an overlap shortens that sample. A
                        // start at or before the sample itself is going back.
                        let last = ti
                            .samples
                            .last_mut()
                            .ok_or_else(|| track_err("decode time set without a sample"))?;
                        let overlap = ti.next_dts - dts;
                        last.duration = u64::from(last.duration)
                            .checked_sub(overlap)
                            .filter(|&d| d > 0)
                            .and_then(|d| u32::try_from(d).ok())
                            .ok_or_else(|| {
                                track_err(
                                    "decode time goes back before the previous fragment's end",
                                )
                            })?;
                    }
                    if dts > ti.next_dts {
                        // A hole: the last sample before it lasts until the fragment after it.
                        let last = ti
                            .samples
                            .last_mut()
                            .ok_or_else(|| track_err("decode time set without a sample"))?;
                        last.duration = dts
                            .checked_sub(ti.next_dts)
                            .and_then(|gap| u64::from(last.duration).checked_add(gap))
                            .and_then(|d| u32::try_from(d).ok())
                            .ok_or_else(|| {
                                track_err("gap in decode time too long for one sample")
                            })?;
                    }
                    dts
                }
            };
            let total = ti
                .samples
                .len()
                .checked_add(traf.samples.len())
                .filter(|&n| n <= MAX_SAMPLES_PER_TRACK as usize)
                .ok_or(Mp4Error::TooManySamples {
                    track: traf.track_id,
                    limit: MAX_SAMPLES_PER_TRACK,
                })?;
            ti.samples.reserve(total - ti.samples.len());
            let mut chunk_end = usize::MAX;
            let mut next = start;
            for s in &traf.samples {
                if s.range.start != chunk_end {
                    self.chunks.push(Chunk {
                        track: t,
                        fragment: index,
                        offset: s.range.start,
                        first: ti.samples.len(),
                        count: 0,
                    });
                }
                self.chunks.last_mut().expect("pushed above").count += 1;
                chunk_end = s.range.end;
                ti.samples.push(Entry {
                    duration: s.duration,
                    size: s.size,
                    cto: s.composition_offset,
                    sync: s.sync,
                });
                next = next
                    .checked_add(u64::from(s.duration))
                    .ok_or_else(|| track_err("decode time overflows"))?;
            }
            ti.next_dts = next;
        }
        self.fragments.push(fragment.len());
        Ok(())
    }

    /// Makes the cut and builds everything before the media data. See [`Layout`].
    pub fn finish(self) -> Result<Layout, Mp4Error> {
        if let Some(fragment) = self.refused {
            return Err(Mp4Error::Refused { fragment });
        }
        Finisher::new(self)?.layout()
    }
}

/// One track as it will be written: the samples kept, `[a, b)`, and where it starts.
struct Kept {
    track: usize,
    a: usize,
    b: usize,
    /// Decode time of sample `a`.
    start_dts: u64,
    /// Sum of the kept samples' durations, in the track's timescale.
    media_duration: u64,
    /// Empty time before the track starts, in the movie timescale.
    delay: u64,
    /// (offset in mdat payload, number of samples) of each kept chunk.
    chunks: Vec<(u64, u32)>,
}

struct Finisher {
    p: Progressive,
    kept: Vec<Kept>,
    /// Seconds from the first frame of the input to the start of the output.
    start_secs: f64,
    duration_ms: u64,
    /// (fragment, start, length) of each piece of media, in output order.
    pieces: Vec<(usize, usize, usize)>,
    media_len: u64,
    chapters: Vec<Chapter>,
}

/// Decode times of a track's samples, one after the other.
fn decode_times(first: u64, samples: &[Entry]) -> impl Iterator<Item = (u64, &Entry)> {
    samples.iter().scan(first, |dts, e| {
        let this = *dts;
        *dts = dts.saturating_add(u64::from(e.duration));
        Some((this, e))
    })
}

fn secs(t: u64, timescale: u32) -> f64 {
    t as f64 / f64::from(timescale)
}

fn pts_secs(dts: u64, e: &Entry, timescale: u32) -> f64 {
    (dts as f64 + f64::from(e.cto)) / f64::from(timescale)
}

impl Finisher {
    fn new(p: Progressive) -> Result<Finisher, Mp4Error> {
        let with_samples: Vec<usize> = (0..p.tracks.len())
            .filter(|&t| !p.tracks[t].samples.is_empty())
            .collect();
        let reference = with_samples
            .iter()
            .copied()
            .find(|&t| p.init.tracks[t].handler == Handler::Video)
            .or(with_samples.first().copied())
            .ok_or(Mp4Error::Empty {
                problem: "the fragments hold no samples",
            })?;
        let first_secs = |t: usize| {
            secs(
                p.tracks[t].first_dts.unwrap_or(0),
                p.init.tracks[t].timescale,
            )
        };
        let origin = with_samples
            .iter()
            .map(|&t| first_secs(t))
            .fold(f64::INFINITY, f64::min);

        // The cut, in seconds from the origin: [t0, t1).
        // The cut: the reference track's samples [a, b], and the presentation times [t0, t1)
        // they cover, in seconds from the origin, by which the other tracks are cut.
        let (t0, t1, reference_cut) = match p.range {
            None => (f64::NEG_INFINITY, f64::INFINITY, None),
            Some((from, to)) => {
                if !(from.is_finite() && to.is_finite() && from < to) {
                    return Err(Mp4Error::Empty {
                        problem: "the time range is empty or not a number",
                    });
                }
                let tr = &p.tracks[reference];
                let ts = p.init.tracks[reference].timescale;
                let mut start = None;
                let mut first_sync = None;
                let mut end = None;
                let mut last_end = f64::NEG_INFINITY;
                for (i, (dts, e)) in
                    decode_times(tr.first_dts.unwrap_or(0), &tr.samples).enumerate()
                {
                    let t = pts_secs(dts, e, ts) - origin;
                    last_end = last_end.max(t + secs(u64::from(e.duration), ts));
                    if e.sync {
                        first_sync.get_or_insert(i);
                        if t <= from + EPSILON_SECS {
                            start = Some(i);
                        }
                    }
                    if t < to - EPSILON_SECS {
                        end = Some(i);
                    }
                }
                if from >= last_end {
                    return Err(Mp4Error::Empty {
                        problem: "the time range starts after the end",
                    });
                }
                let a = start.or(first_sync).unwrap_or(0);
                let b = end.filter(|&b| b >= a).ok_or(Mp4Error::Empty {
                    problem: "no video in the time range",
                })?;
                let mut t0 = f64::INFINITY;
                let mut t1 = f64::NEG_INFINITY;
                for (dts, e) in decode_times(tr.first_dts.unwrap_or(0), &tr.samples)
                    .skip(a)
                    .take(b + 1 - a)
                {
                    let t = pts_secs(dts, e, ts) - origin;
                    t0 = t0.min(t);
                    t1 = t1.max(t + secs(u64::from(e.duration), ts));
                }
                (t0, t1, Some((a, b + 1)))
            }
        };

        let mut kept = Vec::new();
        for &t in &with_samples {
            let tr = &p.tracks[t];
            let ts = p.init.tracks[t].timescale;
            let (mut a, mut b) = (None, 0);
            let mut start_dts = 0;
            let mut media_duration = 0u64;
            for (i, (dts, e)) in decode_times(tr.first_dts.unwrap_or(0), &tr.samples).enumerate() {
                let inside = match reference_cut {
                    // Exactly the samples from the keyframe on: decodable whatever their times.
                    Some((ra, rb)) if t == reference => i >= ra && i < rb,
                    _ => {
                        let pt = pts_secs(dts, e, ts) - origin;
                        // Once started, contiguous: a sample is never dropped from the middle.
                        (a.is_some() || pt >= t0 - EPSILON_SECS) && pt < t1 - EPSILON_SECS
                    }
                };
                if !inside {
                    if a.is_some() {
                        break;
                    }
                    continue;
                }
                if a.is_none() {
                    a = Some(i);
                    start_dts = dts;
                }
                b = i + 1;
                media_duration += u64::from(e.duration);
            }
            if let Some(a) = a {
                kept.push(Kept {
                    track: t,
                    a,
                    b,
                    start_dts,
                    media_duration,
                    delay: 0,
                    chunks: Vec::new(),
                });
            }
        }
        let starts: Vec<f64> = kept
            .iter()
            .map(|k| secs(k.start_dts, p.init.tracks[k.track].timescale))
            .collect();
        let zero = starts.iter().copied().fold(f64::INFINITY, f64::min);
        let mut duration_ms = 0u64;
        for (k, s) in kept.iter_mut().zip(starts) {
            let ts = p.init.tracks[k.track].timescale;
            k.delay = ((s - zero) * f64::from(MOVIE_TIMESCALE)).round() as u64;
            duration_ms = duration_ms.max(k.delay.saturating_add(to_movie(k.media_duration, ts)));
        }

        // The media: kept chunks in the order they were pushed (fragment order, tracks
        // interleaved as the fragments interleave them), each trimmed to the kept samples.
        let mut pieces = Vec::new();
        let mut media_len = 0u64;
        for c in &p.chunks {
            let Some(k) = kept.iter_mut().find(|k| k.track == c.track) else {
                continue;
            };
            let (lo, hi) = (c.first.max(k.a), (c.first + c.count).min(k.b));
            if lo >= hi {
                continue;
            }
            let samples = &p.tracks[c.track].samples;
            let skip: usize = samples[c.first..lo].iter().map(|e| e.size as usize).sum();
            let len: usize = samples[lo..hi].iter().map(|e| e.size as usize).sum();
            k.chunks.push((media_len, (hi - lo) as u32));
            pieces.push((c.fragment, c.offset + skip, len));
            media_len += len as u64;
        }

        let start_secs = zero - origin;
        let duration_secs = duration_ms as f64 / f64::from(MOVIE_TIMESCALE);
        let mut chapters: Vec<Chapter> = p
            .chapters
            .iter()
            .map(|c| Chapter {
                start_secs: c.start_secs - start_secs,
                title: c.title.clone(),
            })
            .filter(|c| c.start_secs >= 0.0 && c.start_secs < duration_secs)
            .collect();
        // Players take the first chapter to start at 0 (ffmpeg moves it there): a marker later
        // than that gets a chapter of its own, after one for the part before it.
        if chapters.first().is_some_and(|c| c.start_secs > 0.0) {
            chapters.insert(0, Chapter::new(0.0, "Start"));
            chapters.truncate(crate::MAX_CHAPTERS);
        }
        Ok(Finisher {
            p,
            kept,
            start_secs,
            duration_ms,
            pieces,
            media_len,
            chapters,
        })
    }

    /// Bytes of the chapter titles' text samples.
    fn chapter_len(&self) -> u64 {
        self.chapters
            .iter()
            .map(|c| text_sample(&c.title).len() as u64)
            .sum()
    }

    fn layout(self) -> Result<Layout, Mp4Error> {
        let chapter_samples: Vec<Vec<u8>> = self
            .chapters
            .iter()
            .map(|c| text_sample(&c.title))
            .collect();
        let chapter_len = self.chapter_len();
        let payload = chapter_len + self.media_len;
        let mdat_header: u64 = if payload + 8 > u64::from(u32::MAX) {
            16
        } else {
            8
        };
        let ftyp = ftyp();
        // Chunk offsets are absolute: the moov is built once to learn its length, then again
        // with the offsets it implies (its length does not change: the offset width is fixed).
        let fixed = ftyp.len() as u64 + mdat_header + payload;
        let mut large = false;
        let mut probe = self.moov(0, large);
        if fixed + probe.len() as u64 > u64::from(u32::MAX) {
            large = true;
            probe = self.moov(0, large);
        }
        let media_start = ftyp.len() as u64 + probe.len() as u64 + mdat_header;
        let moov = self.moov(media_start, large);
        debug_assert_eq!(moov.len(), probe.len());
        let mut head = ftyp;
        head.extend_from_slice(&moov);
        if mdat_header == 16 {
            head.u32(1);
            head.extend_from_slice(b"mdat");
            head.u64(payload + 16);
        } else {
            head.u32((payload + 8) as u32);
            head.extend_from_slice(b"mdat");
        }
        for s in &chapter_samples {
            head.extend_from_slice(s);
        }
        let mut by_fragment = vec![0usize; self.p.fragments.len() + 1];
        for &(f, _, _) in &self.pieces {
            by_fragment[f + 1] += 1;
        }
        for i in 1..by_fragment.len() {
            by_fragment[i] += by_fragment[i - 1];
        }
        Ok(Layout {
            total_len: head.len() as u64 + self.media_len,
            head,
            pieces: self.pieces.iter().map(|&(_, s, l)| (s, l)).collect(),
            by_fragment,
            fragment_lens: self.p.fragments.clone(),
            start_secs: self.start_secs,
            duration_secs: self.duration_ms as f64 / f64::from(MOVIE_TIMESCALE),
            chapters: self.chapters.clone(),
        })
    }

    fn moov(&self, media_start: u64, large: bool) -> Vec<u8> {
        let tracks = &self.p.init.tracks;
        let max_id = tracks.iter().map(|t| t.id).max().unwrap_or(0);
        let text_id = max_id.saturating_add(1);
        let chapters = !self.chapters.is_empty();
        let mut o = Vec::new();
        boxed(&mut o, b"moov", |o| {
            let v = u8::from(self.duration_ms > u64::from(u32::MAX));
            full(o, b"mvhd", v, 0, |o| {
                if v == 1 {
                    o.u64(0);
                    o.u64(0);
                    o.u32(MOVIE_TIMESCALE);
                    o.u64(self.duration_ms);
                } else {
                    o.u32(0);
                    o.u32(0);
                    o.u32(MOVIE_TIMESCALE);
                    o.u32(self.duration_ms as u32);
                }
                o.u32(0x0001_0000); // rate 1.0
                o.u16(0x0100); // volume 1.0
                o.extend_from_slice(&[0; 10]);
                MATRIX.iter().for_each(|&m| o.u32(m));
                o.extend_from_slice(&[0; 24]);
                o.u32(text_id.saturating_add(u32::from(chapters)));
            });
            let chapter_ref = self
                .kept
                .iter()
                .position(|k| tracks[k.track].handler == Handler::Video)
                .unwrap_or(0);
            for (i, k) in self.kept.iter().enumerate() {
                let chap = (chapters && i == chapter_ref).then_some(text_id);
                // The chapter titles come first in the mdat payload, the media after them.
                self.trak(
                    o,
                    &tracks[k.track],
                    k,
                    chap,
                    media_start + self.chapter_len(),
                    large,
                );
            }
            if chapters {
                self.text_trak(o, text_id, media_start, large);
                self.udta(o);
            }
        });
        o
    }

    fn trak(
        &self,
        o: &mut Vec<u8>,
        track: &Track,
        k: &Kept,
        chapters: Option<u32>,
        media_start: u64,
        large: bool,
    ) {
        let samples = &self.p.tracks[k.track].samples[k.a..k.b];
        let ts = track.timescale;
        let media_movie = to_movie(k.media_duration, ts);
        // The first sample's composition offset: presentation starts there, not before.
        let first_cto = samples.first().map_or(0, |e| e.cto.max(0));
        boxed(o, b"trak", |o| {
            let volume = if track.handler == Handler::Audio {
                0x0100
            } else {
                0
            };
            tkhd(
                o,
                3,
                track.id,
                k.delay.saturating_add(media_movie),
                volume,
                track.width,
                track.height,
            );
            if let Some(text) = chapters {
                boxed(o, b"tref", |o| boxed(o, b"chap", |o| o.u32(text)));
            }
            if k.delay > 0 || first_cto != 0 {
                edts(o, k.delay, media_movie, i64::from(first_cto));
            }
            boxed(o, b"mdia", |o| {
                mdhd(o, ts, k.media_duration, track.language);
                let (handler, name): (&[u8; 4], &str) = match track.handler {
                    Handler::Video => (b"vide", "VideoHandler"),
                    Handler::Audio => (b"soun", "SoundHandler"),
                    Handler::Other(ref h) => (h, "DataHandler"),
                };
                hdlr(o, handler, name);
                boxed(o, b"minf", |o| {
                    match track.handler {
                        Handler::Video => full(o, b"vmhd", 0, 1, |o| o.extend_from_slice(&[0; 8])),
                        Handler::Audio => full(o, b"smhd", 0, 0, |o| o.u32(0)),
                        Handler::Other(_) => full(o, b"nmhd", 0, 0, |_| {}),
                    }
                    dinf(o);
                    boxed(o, b"stbl", |o| {
                        o.extend_from_slice(&track.stsd);
                        stts(o, samples.iter().map(|e| e.duration));
                        if samples.iter().any(|e| e.cto != 0) {
                            let v = u8::from(samples.iter().any(|e| e.cto < 0));
                            full(o, b"ctts", v, 0, |o| {
                                let runs = runs(samples.iter().map(|e| e.cto));
                                o.u32(runs.len() as u32);
                                for (n, c) in runs {
                                    o.u32(n);
                                    o.u32(c as u32);
                                }
                            });
                        }
                        if track.handler == Handler::Video {
                            full(o, b"stss", 0, 0, |o| {
                                let n = samples.iter().filter(|e| e.sync).count();
                                o.u32(n as u32);
                                for (i, _) in samples.iter().enumerate().filter(|(_, e)| e.sync) {
                                    o.u32(i as u32 + 1);
                                }
                            });
                        }
                        stsc(o, k.chunks.iter().map(|&(_, n)| n));
                        stsz(o, samples.iter().map(|e| e.size), samples.len());
                        chunk_offsets(o, k.chunks.iter().map(|&(off, _)| media_start + off), large);
                    });
                });
            });
        });
    }

    /// The QuickTime chapter track: a disabled text track whose samples are the titles, at the
    /// start of the mdat payload.
    fn text_trak(&self, o: &mut Vec<u8>, id: u32, media_start: u64, large: bool) {
        let ends = self
            .chapters
            .iter()
            .skip(1)
            .map(|c| to_ms(c.start_secs))
            .chain([self.duration_ms]);
        let durations: Vec<u32> = self
            .chapters
            .iter()
            .zip(ends)
            .map(|(c, end)| {
                u32::try_from(end.saturating_sub(to_ms(c.start_secs))).unwrap_or(u32::MAX)
            })
            .collect();
        let sizes: Vec<u32> = self
            .chapters
            .iter()
            .map(|c| text_sample(&c.title).len() as u32)
            .collect();
        boxed(o, b"trak", |o| {
            // Flags 0: not enabled, so players do not show the titles as subtitles.
            tkhd(o, 0, id, self.duration_ms, 0, 0, 0);
            boxed(o, b"mdia", |o| {
                mdhd(o, MOVIE_TIMESCALE, self.duration_ms, UNDETERMINED);
                hdlr(o, b"text", "ChapterHandler");
                boxed(o, b"minf", |o| {
                    // QuickTime's base media header for text, as QuickTime itself writes it.
                    boxed(o, b"gmhd", |o| {
                        full(o, b"gmin", 0, 0, |o| {
                            o.u16(0x0040); // graphics mode: copy
                            [0x8000u16; 3].iter().for_each(|&c| o.u16(c));
                            o.u16(0); // balance
                            o.u16(0);
                        });
                        boxed(o, b"text", |o| MATRIX.iter().for_each(|&m| o.u32(m)));
                    });
                    dinf(o);
                    boxed(o, b"stbl", |o| {
                        full(o, b"stsd", 0, 0, |o| {
                            o.u32(1);
                            boxed(o, b"text", |o| {
                                o.extend_from_slice(&[0; 6]);
                                o.u16(1); // data reference index
                                o.u32(0); // display flags
                                o.u32(1); // justification: centre
                                o.extend_from_slice(&[0; 6]); // background colour
                                o.extend_from_slice(&[0; 8]); // default text box
                                o.extend_from_slice(&[0; 8]); // reserved
                                o.u16(0); // font number
                                o.u16(0); // font face
                                o.push(0);
                                o.u16(0);
                                o.extend_from_slice(&[0; 6]); // foreground colour
                                o.push(0); // font name: empty Pascal string
                            });
                        });
                        stts(o, durations.iter().copied());
                        stsc(o, sizes.iter().map(|_| 1));
                        stsz(o, sizes.iter().copied(), sizes.len());
                        let mut off = media_start;
                        let offsets: Vec<u64> = sizes
                            .iter()
                            .map(|&s| {
                                let this = off;
                                off += u64::from(s);
                                this
                            })
                            .collect();
                        chunk_offsets(o, offsets.into_iter(), large);
                    });
                });
            });
        });
    }

    /// Nero chapters (`udta/chpl`), which ffmpeg-based players and some others read.
    fn udta(&self, o: &mut Vec<u8>) {
        boxed(o, b"udta", |o| {
            full(o, b"chpl", 1, 0, |o| {
                o.u32(0);
                o.push(self.chapters.len() as u8);
                for c in &self.chapters {
                    // 100-nanosecond units.
                    o.u64((c.start_secs * 10_000_000.0).round() as u64);
                    o.push(c.title.len() as u8);
                    o.extend_from_slice(c.title.as_bytes());
                }
            });
        });
    }
}

/// The packed ISO-639-2 code `und`.
const UNDETERMINED: u16 = 0x55c4;

fn to_ms(secs: f64) -> u64 {
    (secs.max(0.0) * f64::from(MOVIE_TIMESCALE)).round() as u64
}

/// A duration in a track's timescale, in the movie timescale (rounded up, so that the movie
/// is never shorter than its media).
fn to_movie(d: u64, timescale: u32) -> u64 {
    let t = u128::from(d) * u128::from(MOVIE_TIMESCALE);
    u64::try_from(t.div_ceil(u128::from(timescale))).unwrap_or(u64::MAX)
}

fn ftyp() -> Vec<u8> {
    let mut o = Vec::new();
    boxed(&mut o, b"ftyp", |o| {
        o.extend_from_slice(b"isom");
        o.u32(0x200);
        for b in [b"isom", b"iso6", b"mp41", b"avc1"] {
            o.extend_from_slice(b);
        }
    });
    o
}

/// A QuickTime text sample: length, UTF-8 text, and an `encd` box saying it is UTF-8.
fn text_sample(title: &str) -> Vec<u8> {
    let mut o = Vec::with_capacity(title.len() + 14);
    o.u16(title.len() as u16);
    o.extend_from_slice(title.as_bytes());
    boxed(&mut o, b"encd", |o| o.u32(0x0000_0100));
    o
}

fn tkhd(o: &mut Vec<u8>, flags: u32, id: u32, duration: u64, volume: u16, w: u32, h: u32) {
    let v = u8::from(duration > u64::from(u32::MAX));
    full(o, b"tkhd", v, flags, |o| {
        if v == 1 {
            o.u64(0);
            o.u64(0);
            o.u32(id);
            o.u32(0);
            o.u64(duration);
        } else {
            o.u32(0);
            o.u32(0);
            o.u32(id);
            o.u32(0);
            o.u32(duration as u32);
        }
        o.extend_from_slice(&[0; 8]);
        o.u16(0); // layer
        o.u16(0); // alternate group
        o.u16(volume);
        o.u16(0);
        MATRIX.iter().for_each(|&m| o.u32(m));
        o.u32(w);
        o.u32(h);
    });
}

/// An edit list: `delay` of nothing, then the media from `media_time` for `duration`.
fn edts(o: &mut Vec<u8>, delay: u64, duration: u64, media_time: i64) {
    let v = u8::from(delay.max(duration) > u64::from(u32::MAX));
    boxed(o, b"edts", |o| {
        full(o, b"elst", v, 0, |o| {
            let entries: Vec<(u64, i64)> = [(delay, -1), (duration, media_time)]
                .into_iter()
                .filter(|&(d, t)| t >= 0 || d > 0)
                .collect();
            o.u32(entries.len() as u32);
            for (d, t) in entries {
                if v == 1 {
                    o.u64(d);
                    o.u64(t as u64);
                } else {
                    o.u32(d as u32);
                    o.u32(t as i32 as u32);
                }
                o.u32(0x0001_0000); // rate 1.0
            }
        });
    });
}

fn mdhd(o: &mut Vec<u8>, timescale: u32, duration: u64, language: u16) {
    let v = u8::from(duration > u64::from(u32::MAX));
    full(o, b"mdhd", v, 0, |o| {
        if v == 1 {
            o.u64(0);
            o.u64(0);
            o.u32(timescale);
            o.u64(duration);
        } else {
            o.u32(0);
            o.u32(0);
            o.u32(timescale);
            o.u32(duration as u32);
        }
        o.u16(language);
        o.u16(0);
    });
}

fn hdlr(o: &mut Vec<u8>, handler: &[u8; 4], name: &str) {
    full(o, b"hdlr", 0, 0, |o| {
        o.u32(0);
        o.extend_from_slice(handler);
        o.extend_from_slice(&[0; 12]);
        o.extend_from_slice(name.as_bytes());
        o.push(0);
    });
}

/// The data is in this file.
fn dinf(o: &mut Vec<u8>) {
    boxed(o, b"dinf", |o| {
        full(o, b"dref", 0, 0, |o| {
            o.u32(1);
            full(o, b"url ", 0, 1, |_| {});
        });
    });
}

/// Run-length encoding: (count, value).
fn runs<T: PartialEq + Copy>(values: impl Iterator<Item = T>) -> Vec<(u32, T)> {
    let mut out: Vec<(u32, T)> = Vec::new();
    for v in values {
        match out.last_mut() {
            Some((n, last)) if *last == v => *n += 1,
            _ => out.push((1, v)),
        }
    }
    out
}

fn stts(o: &mut Vec<u8>, durations: impl Iterator<Item = u32>) {
    full(o, b"stts", 0, 0, |o| {
        let runs = runs(durations);
        o.u32(runs.len() as u32);
        for (n, d) in runs {
            o.u32(n);
            o.u32(d);
        }
    });
}

fn stsc(o: &mut Vec<u8>, per_chunk: impl Iterator<Item = u32>) {
    full(o, b"stsc", 0, 0, |o| {
        let mut entries = Vec::new();
        let mut last = None;
        for (i, n) in per_chunk.enumerate() {
            if last != Some(n) {
                entries.push((i as u32 + 1, n));
                last = Some(n);
            }
        }
        o.u32(entries.len() as u32);
        for (first, n) in entries {
            o.u32(first);
            o.u32(n);
            o.u32(1); // sample description index
        }
    });
}

fn stsz(o: &mut Vec<u8>, sizes: impl Iterator<Item = u32> + Clone, count: usize) {
    full(o, b"stsz", 0, 0, |o| {
        let mut all = sizes.clone();
        let first = all.next();
        match first {
            Some(s) if s != 0 && all.all(|x| x == s) => {
                o.u32(s);
                o.u32(count as u32);
            }
            _ => {
                o.u32(0);
                o.u32(count as u32);
                sizes.for_each(|s| o.u32(s));
            }
        }
    });
}

fn chunk_offsets(o: &mut Vec<u8>, offsets: impl Iterator<Item = u64>, large: bool) {
    let offsets: Vec<u64> = offsets.collect();
    if large {
        full(o, b"co64", 0, 0, |o| {
            o.u32(offsets.len() as u32);
            offsets.iter().for_each(|&x| o.u64(x));
        });
    } else {
        full(o, b"stco", 0, 0, |o| {
            o.u32(offsets.len() as u32);
            offsets.iter().for_each(|&x| o.u32(x as u32));
        });
    }
}

/// A progressive MP4 ready to write: [`Layout::head`], then for each fragment in order the
/// pieces [`Layout::media`] gives.
#[derive(Debug)]
pub struct Layout {
    head: Vec<u8>,
    /// (start, length) in their fragment of each piece of media, in output order.
    pieces: Vec<(usize, usize)>,
    /// Pieces of fragment `i` are `pieces[by_fragment[i]..by_fragment[i + 1]]`.
    by_fragment: Vec<usize>,
    fragment_lens: Vec<usize>,
    total_len: u64,
    start_secs: f64,
    duration_secs: f64,
    chapters: Vec<Chapter>,
}

impl Layout {
    /// `ftyp`, `moov`, the `mdat` header and the chapter titles: the start of the file.
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// The pieces of fragment `index` (the same bytes that were pushed as that fragment) to
    /// append, in order. Fragments must be given in the order they were pushed.
    pub fn media<'a>(&self, index: usize, fragment: &'a [u8]) -> Result<Vec<&'a [u8]>, Mp4Error> {
        if self.fragment_lens.get(index) != Some(&fragment.len()) {
            return Err(Mp4Error::Fragment {
                fragment: index,
                problem: "not the fragment indexed under this number (its length differs)",
            });
        }
        let pieces = &self.pieces[self.by_fragment[index]..self.by_fragment[index + 1]];
        Ok(pieces
            .iter()
            .map(|&(start, len)| &fragment[start..start + len])
            .collect())
    }

    /// The whole file, given the fragments pushed, in order.
    pub fn to_vec<F: AsRef<[u8]>>(&self, fragments: &[F]) -> Result<Vec<u8>, Mp4Error> {
        if fragments.len() != self.fragment_lens.len() {
            return Err(Mp4Error::Fragment {
                fragment: fragments.len(),
                problem: "not as many fragments as were pushed",
            });
        }
        let mut out = Vec::with_capacity(usize::try_from(self.total_len).unwrap_or(0));
        out.extend_from_slice(&self.head);
        for (i, f) in fragments.iter().enumerate() {
            for piece in self.media(i, f.as_ref())? {
                out.extend_from_slice(piece);
            }
        }
        Ok(out)
    }

    /// The length of the whole file in bytes.
    pub fn len(&self) -> u64 {
        self.total_len
    }

    /// Always false: a file has at least its `ftyp` and `moov`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Where the file starts, in seconds from the first frame of the input (0 without a cut).
    pub fn start_secs(&self) -> f64 {
        self.start_secs
    }

    /// The file's duration in seconds, as `mvhd` says it.
    pub fn duration_secs(&self) -> f64 {
        self.duration_secs
    }

    /// The chapters written, their start in seconds from the start of the file; for
    /// [`crate::webvtt_chapters`] beside it.
    pub fn chapters(&self) -> &[Chapter] {
        &self.chapters
    }
}
