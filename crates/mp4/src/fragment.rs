//! Media fragments (`moof` + `mdat`): the samples of each track, with their times and bytes.
//!
//! Handles what fragmenting muxers write (GStreamer's isofmp4mux and cmafmux, ffmpeg, Shaka,
//! Bento4): `tfhd` with or without base-data-offset, default-base-is-moof or neither, defaults
//! from `tfhd` or from the init's `trex`, `trun` with any of its optional fields, composition
//! offsets of version 0 and 1, first-sample-flags, several `trun`s per `traf` and several `traf`s
//! per `moof`, and several `moof`s in one piece of data.

use std::ops::Range;

use crate::Mp4Error;
use crate::init::InitInfo;
use crate::read::{Reader, be_u32, be_u64, boxes};

/// Sample flags bit: the sample is not a sync sample (ISO/IEC 14496-12 §8.8.3.1).
const NON_SYNC: u32 = 0x0001_0000;

/// One sample of a track fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Decode time in the track's timescale: from the `tfdt` (0 if the fragment has none).
    pub decode_time: u64,
    /// Duration in the track's timescale.
    pub duration: u32,
    /// Size in bytes (the length of `range`).
    pub size: u32,
    /// A sync sample (keyframe): playback can start here.
    pub sync: bool,
    /// Presentation time minus decode time.
    pub composition_offset: i32,
    /// Where its bytes are in the fragment given.
    pub range: Range<usize>,
}

/// The samples of one track fragment (`traf`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackSamples {
    /// The track id, one of the init segment's.
    pub track_id: u32,
    /// The `tfdt` decode time, if the fragment has one.
    pub base_decode_time: Option<u64>,
    /// The samples, in decode order.
    pub samples: Vec<Sample>,
}

/// Parses every `moof` in `fragment` into the samples of each of its track fragments.
///
/// `index` only names the fragment in errors. Every sample's bytes lie inside an `mdat` box of
/// `fragment`. A `base-data-offset` in `tfhd` is taken as relative to the start of `fragment`
/// (a fragment is handled on its own, not as part of the file it may have come from).
pub fn parse_fragment(
    init: &InitInfo,
    fragment: &[u8],
    index: usize,
) -> Result<Vec<TrackSamples>, Mp4Error> {
    let mut mdats = Vec::new();
    let mut moofs = Vec::new();
    for b in boxes(fragment, "fragment") {
        let b = b?;
        match &b.kind {
            b"moof" => moofs.push(b),
            b"mdat" => mdats.push(b.body_start..b.end()),
            _ => {}
        }
    }
    if moofs.is_empty() {
        return Err(Mp4Error::Missing { path: "moof" });
    }
    let cx = Context {
        init,
        fragment,
        mdats: &mdats,
        index,
    };
    let mut out = Vec::new();
    // Samples may share bytes (a trun's data offset can point back), so their number is bounded
    // by the fragment's length as a whole, not per trun: memory stays proportional to the input.
    let mut budget = fragment.len();
    for moof in moofs {
        // Without base-data-offset or default-base-is-moof, a traf's data follows the previous
        // traf's (§8.8.7.1); the first one's starts at the moof.
        let mut previous_end = moof.start;
        for traf in boxes(moof.body, "moof") {
            let traf = traf?;
            if &traf.kind != b"traf" {
                continue;
            }
            let t = parse_traf(&cx, moof.start, previous_end, traf.body, &mut budget)?;
            if let Some(last) = t.samples.last() {
                previous_end = last.range.end;
            }
            out.push(t);
        }
    }
    Ok(out)
}

/// What every track fragment of one fragment is parsed against.
struct Context<'a> {
    init: &'a InitInfo,
    fragment: &'a [u8],
    /// Payload ranges of the fragment's `mdat` boxes: where sample bytes may be.
    mdats: &'a [Range<usize>],
    /// Names the fragment in errors.
    index: usize,
}

fn parse_traf(
    cx: &Context<'_>,
    moof_start: usize,
    previous_end: usize,
    traf: &[u8],
    budget: &mut usize,
) -> Result<TrackSamples, Mp4Error> {
    let Context {
        init,
        fragment,
        mdats,
        index,
    } = *cx;
    let mut tfhd = None;
    let mut tfdt = None;
    for b in boxes(traf, "moof/traf") {
        let b = b?;
        match &b.kind {
            b"tfhd" if tfhd.is_none() => tfhd = Some(b.body),
            b"tfdt" if tfdt.is_none() => tfdt = Some(b.body),
            _ => {}
        }
    }
    let tfhd = tfhd.ok_or(Mp4Error::Missing {
        path: "moof/traf/tfhd",
    })?;
    let mut r = Reader::new(tfhd, "moof/traf/tfhd");
    let (_, flags) = r.version_flags()?;
    let track_id = r.u32()?;
    let track = init.track(track_id).ok_or(Mp4Error::Track {
        fragment: index,
        track: track_id,
        problem: "no such track in the init segment",
    })?;
    // A trun's data offset counts from this base, however many truns came before; a trun
    // without one continues where the previous trun's data ended (§8.8.8.1).
    let traf_base = if flags & 0x01 != 0 {
        usize::try_from(r.u64()?).map_err(|_| Mp4Error::Field {
            path: "moof/traf/tfhd",
            problem: "base data offset beyond the fragment",
        })?
    } else if flags & 0x2_0000 != 0 {
        moof_start
    } else {
        previous_end
    };
    let mut base = traf_base;
    if flags & 0x02 != 0 {
        r.skip(4)?; // sample description index: one entry is all a progressive file copies
    }
    let mut defaults = track.defaults;
    if flags & 0x08 != 0 {
        defaults.duration = r.u32()?;
    }
    if flags & 0x10 != 0 {
        defaults.size = r.u32()?;
    }
    if flags & 0x20 != 0 {
        defaults.flags = r.u32()?;
    }
    let base_decode_time = match tfdt {
        None => None,
        Some(p) => Some(match p.first() {
            Some(1) if p.len() >= 12 => be_u64(&p[4..12]),
            Some(0) if p.len() >= 8 => u64::from(be_u32(&p[4..8])),
            _ => {
                return Err(Mp4Error::Field {
                    path: "moof/traf/tfdt",
                    problem: "unknown version or cut short",
                });
            }
        }),
    };
    let mut out = TrackSamples {
        track_id,
        base_decode_time,
        samples: Vec::new(),
    };
    if flags & 0x1_0000 != 0 {
        return Ok(out); // duration-is-empty: no samples
    }
    let mut dts = base_decode_time.unwrap_or(0);
    let sample_error = |sample: u64, problem| Mp4Error::Sample {
        fragment: index,
        track: track_id,
        sample,
        problem,
    };
    for b in boxes(traf, "moof/traf") {
        let b = b?;
        if &b.kind != b"trun" {
            continue;
        }
        let mut r = Reader::new(b.body, "moof/traf/trun");
        let (version, tr) = r.version_flags()?;
        let count = r.u32()?;
        if tr & 0x01 != 0 {
            let offset = r.u32()? as i32;
            base = traf_base
                .checked_add_signed(offset as isize)
                .filter(|&b| b <= fragment.len())
                .ok_or(Mp4Error::Field {
                    path: "moof/traf/trun",
                    problem: "data offset outside the fragment",
                })?;
        }
        let first_flags = if tr & 0x04 != 0 { Some(r.u32()?) } else { None };
        let per_sample = [0x100, 0x200, 0x400, 0x800]
            .iter()
            .filter(|&&f| tr & f != 0)
            .count()
            * 4;
        // The count is outside data: bounded by what it describes before anything is
        // allocated. Per-sample fields must be in the box, and every sample's bytes in the
        // fragment, so neither can exceed its length.
        let count = usize::try_from(count)
            .ok()
            .filter(|&c| c <= *budget)
            .filter(|&c| per_sample == 0 || c <= r.remaining() / per_sample)
            .ok_or(Mp4Error::Field {
                path: "moof/traf/trun",
                problem: "more samples than the box or the fragment can hold",
            })?;
        *budget -= count;
        let done = out.samples.len() as u64;
        out.samples.reserve(count.min(4096));
        for i in 0..count {
            let n = done + i as u64;
            let duration = if tr & 0x100 != 0 {
                r.u32()?
            } else {
                defaults.duration
            };
            let size = if tr & 0x200 != 0 {
                r.u32()?
            } else {
                defaults.size
            };
            let sflags = if tr & 0x400 != 0 {
                r.u32()?
            } else if let (0, Some(f)) = (i, first_flags) {
                f
            } else {
                defaults.flags
            };
            let cto = if tr & 0x800 != 0 {
                let v = r.u32()?;
                if version == 0 {
                    i32::try_from(v)
                        .map_err(|_| sample_error(n, "composition offset does not fit 31 bits"))?
                } else {
                    v as i32
                }
            } else {
                0
            };
            let end = usize::try_from(size)
                .ok()
                .and_then(|s| base.checked_add(s))
                .ok_or_else(|| sample_error(n, "bytes past the end of the fragment"))?;
            let range = base..end;
            if !mdats
                .iter()
                .any(|m| m.start <= range.start && range.end <= m.end)
            {
                return Err(sample_error(n, "bytes not inside an mdat box"));
            }
            out.samples.push(Sample {
                decode_time: dts,
                duration,
                size,
                sync: sflags & NON_SYNC == 0,
                composition_offset: cto,
                range,
            });
            base = end;
            dts = dts
                .checked_add(u64::from(duration))
                .ok_or_else(|| sample_error(n, "decode time overflows"))?;
        }
    }
    Ok(out)
}
