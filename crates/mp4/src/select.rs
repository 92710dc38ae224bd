//! One view of a recording with two cameras: the init segment and fragments rewritten to hold
//! only some of their tracks.
//!
//! A browser's `SourceBuffer` plays one video track (Chromium ignores the others), so a page
//! that shows two views side by side feeds two of them: the first camera with the sound, and
//! the second camera. [`select_init`] keeps the chosen tracks' `trak` and `trex` boxes and copies
//! everything else; [`select_fragment`] writes a new `moof` (one `traf` per chosen track, each
//! with its own `tfdt` and a `trun` listing every sample) followed by one `mdat` of their bytes.
//! Decode times are kept as they were, so both views stay on the recording's one clock.

use crate::Mp4Error;
use crate::fragment::{TrackSamples, parse_fragment};
use crate::init::InitInfo;
use crate::read::{Reader, boxes, find};
use crate::write::{Put, boxed, full};

/// `tfhd` flag: data offsets count from the start of the `moof`.
const DEFAULT_BASE_IS_MOOF: u32 = 0x02_0000;
/// `trun` flags: data offset, and each sample's duration, size, flags and composition offset.
const TRUN_FLAGS: u32 = 0x0001 | 0x0100 | 0x0200 | 0x0400 | 0x0800;
/// Sample flags of a sync sample (depends on no other) and of any other.
const SYNC_FLAGS: u32 = 0x0200_0000;
const NON_SYNC_FLAGS: u32 = 0x0101_0000;

fn check_keep(info: &InitInfo, keep: &[u32]) -> Result<(), Mp4Error> {
    if keep.is_empty() {
        return Err(Mp4Error::Field {
            path: "moov/trak",
            problem: "no track chosen",
        });
    }
    if keep.iter().any(|id| info.track(*id).is_none()) {
        return Err(Mp4Error::Field {
            path: "moov/trak",
            problem: "a chosen track is not in the init segment",
        });
    }
    Ok(())
}

/// The init segment `init` with only the tracks whose ids are in `keep`.
pub fn select_init(init: &[u8], keep: &[u32]) -> Result<Vec<u8>, Mp4Error> {
    let info = InitInfo::parse(init)?;
    check_keep(&info, keep)?;
    let mut out = Vec::with_capacity(init.len());
    for b in boxes(init, "init segment") {
        let b = b?;
        if &b.kind != b"moov" {
            out.extend_from_slice(&init[b.start..b.end()]);
            continue;
        }
        let children = boxes(b.body, "moov").collect::<Result<Vec<_>, _>>()?;
        let mut moov = Vec::with_capacity(b.body.len());
        // The tracks are in the order of the `trak` boxes (InitInfo::parse).
        let mut traks = info.tracks.iter();
        for c in children {
            match &c.kind {
                b"trak" => {
                    let id = traks.next().map(|t| t.id);
                    if id.is_some_and(|id| keep.contains(&id)) {
                        moov.extend_from_slice(&b.body[c.start..c.end()]);
                    }
                }
                b"mvex" => {
                    let inner = boxes(c.body, "moov/mvex").collect::<Result<Vec<_>, _>>()?;
                    let mut kept = Vec::new();
                    for t in inner {
                        if &t.kind == b"trex" {
                            let mut r = Reader::new(t.body, "moov/mvex/trex");
                            r.version_flags()?;
                            if !keep.contains(&r.u32()?) {
                                continue;
                            }
                        }
                        kept.extend_from_slice(&c.body[t.start..t.end()]);
                    }
                    boxed(&mut moov, b"mvex", |o| o.extend_from_slice(&kept));
                }
                _ => moov.extend_from_slice(&b.body[c.start..c.end()]),
            }
        }
        boxed(&mut out, b"moov", |o| o.extend_from_slice(&moov));
    }
    Ok(out)
}

/// The fragment `fragment` (of the stream `info` describes) with only the track fragments of
/// the tracks in `keep`, their samples' bytes in one `mdat`. `index` names it in errors.
pub fn select_fragment(
    info: &InitInfo,
    fragment: &[u8],
    keep: &[u32],
    index: usize,
) -> Result<Vec<u8>, Mp4Error> {
    check_keep(info, keep)?;
    let trafs: Vec<TrackSamples> = parse_fragment(info, fragment, index)?
        .into_iter()
        .filter(|t| keep.contains(&t.track_id) && !t.samples.is_empty())
        .collect();
    let sequence = match find(fragment, b"moof", "fragment")? {
        Some(moof) => match find(moof.body, b"mfhd", "moof")? {
            Some(mfhd) => {
                let mut r = Reader::new(mfhd.body, "moof/mfhd");
                r.version_flags()?;
                r.u32()?
            }
            None => 1,
        },
        None => 1,
    };
    let too_big = || Mp4Error::Fragment {
        fragment: index,
        problem: "too large to rewrite as one view",
    };
    // A fragment's samples may share bytes and need no bytes in a `trun` (defaults from the
    // `tfhd`), so a crafted one could make its rewrite many times its size: the rewrite may be
    // at most the fragment's size again (each sample's 16 bytes of `trun` counted, its bytes
    // once), which a fragment as a muxer writes it never comes near.
    let samples: usize = trafs.iter().map(|t| t.samples.len()).sum();
    let bytes = trafs
        .iter()
        .flat_map(|t| &t.samples)
        .try_fold(0usize, |n, s| n.checked_add(s.range.len()));
    let limit = fragment.len().saturating_mul(2).saturating_add(4096);
    match bytes.and_then(|b| b.checked_add(samples.checked_mul(16)?)) {
        Some(n) if n <= limit => {}
        _ => return Err(too_big()),
    }
    let mut out = Vec::new();
    // Where each trun's data offset goes, and its data's offset within the mdat payload.
    let mut offsets = Vec::with_capacity(trafs.len());
    let mut data_len = 0usize;
    boxed(&mut out, b"moof", |o| {
        full(o, b"mfhd", 0, 0, |o| o.u32(sequence));
        for t in &trafs {
            boxed(o, b"traf", |o| {
                full(o, b"tfhd", 0, DEFAULT_BASE_IS_MOOF, |o| o.u32(t.track_id));
                full(o, b"tfdt", 1, 0, |o| o.u64(t.samples[0].decode_time));
                full(o, b"trun", 1, TRUN_FLAGS, |o| {
                    o.u32(t.samples.len() as u32);
                    offsets.push((o.len(), data_len));
                    o.u32(0);
                    for s in &t.samples {
                        o.u32(s.duration);
                        o.u32(s.size);
                        o.u32(if s.sync { SYNC_FLAGS } else { NON_SYNC_FLAGS });
                        o.u32(s.composition_offset as u32);
                        // Bounded above: the sum of every kept sample's size.
                        data_len += s.range.len();
                    }
                });
            });
        }
    });
    let moof_len = out.len();
    for (at, within) in offsets {
        let offset = moof_len
            .checked_add(8)
            .and_then(|n| n.checked_add(within))
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(too_big)?;
        out[at..at + 4].copy_from_slice(&offset.to_be_bytes());
    }
    let mdat_len = data_len
        .checked_add(8)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(too_big)?;
    out.reserve(data_len + 8);
    out.u32(mdat_len);
    out.extend_from_slice(b"mdat");
    for t in &trafs {
        for s in &t.samples {
            out.extend_from_slice(&fragment[s.range.clone()]);
        }
    }
    Ok(out)
}
