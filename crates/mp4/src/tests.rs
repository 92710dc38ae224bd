//! Tests on a real GStreamer stream (testdata/, see its README) and on hand-built boxes.

use crate::read::{be_u32, boxes};
use crate::testing::{bx, rng};
use crate::*;

const INIT: &[u8] = include_bytes!("../testdata/init.mp4");
const FRAGMENTS: [&[u8]; 3] = [
    include_bytes!("../testdata/frag0.m4s"),
    include_bytes!("../testdata/frag1.m4s"),
    include_bytes!("../testdata/frag2.m4s"),
];

fn full_box(kind: &[u8; 4], version: u8, flags: u32, body: &[u8]) -> Vec<u8> {
    let mut b = ((u32::from(version) << 24) | flags).to_be_bytes().to_vec();
    b.extend_from_slice(body);
    bx(kind, &b)
}

fn top_level(file: &[u8]) -> Vec<[u8; 4]> {
    boxes(file, "file").map(|b| b.unwrap().kind).collect()
}

/// The payload of the first box at `path` (each step the first box of that type).
fn find_path<'a>(mut data: &'a [u8], path: &[&[u8; 4]]) -> Option<&'a [u8]> {
    for kind in path {
        data = boxes(data, "test")
            .map(|b| b.unwrap())
            .find(|b| &b.kind == *kind)?
            .body;
    }
    Some(data)
}

fn all_boxes<'a>(data: &'a [u8], kind: &[u8; 4]) -> Vec<&'a [u8]> {
    boxes(data, "test")
        .map(|b| b.unwrap())
        .filter(|b| &b.kind == kind)
        .map(|b| b.body)
        .collect()
}

fn build(chapters: &[Chapter], range: Option<(f64, f64)>) -> (Layout, Vec<u8>) {
    let mut p = Progressive::new(INIT).unwrap();
    p.chapters(chapters);
    if let Some((a, b)) = range {
        p.range(a, b);
    }
    for f in FRAGMENTS {
        p.push_fragment(f).unwrap();
    }
    let layout = p.finish().unwrap();
    let file = layout.to_vec(&FRAGMENTS).unwrap();
    assert_eq!(file.len() as u64, layout.len());
    (layout, file)
}

#[test]
fn the_gstreamer_init_segment_names_its_track_and_codec() {
    let info = InitInfo::parse(INIT).unwrap();
    assert_eq!(info.tracks.len(), 1);
    let t = &info.tracks[0];
    assert_eq!((t.id, t.handler), (1, Handler::Video));
    assert_eq!(t.width >> 16, 160);
    assert_eq!(t.height >> 16, 120);
    assert_eq!(&t.sample_entry().unwrap()[4..8], b"avc1");
    // x264 with I420 input: High profile; the fixture's level is 1.1.
    assert_eq!(
        info.mime_codecs().unwrap(),
        "video/mp4; codecs=\"avc1.64000b\""
    );
}

#[test]
fn the_gstreamer_fragments_become_one_file_with_moov_first_and_every_sample_in_order() {
    let info = InitInfo::parse(INIT).unwrap();
    let mut expected_media = Vec::new();
    let mut samples = 0;
    let mut duration = 0u64;
    for (i, f) in FRAGMENTS.iter().enumerate() {
        for t in parse_fragment(&info, f, i).unwrap() {
            assert!(t.samples[0].sync, "a fragment starts on a keyframe");
            for s in &t.samples {
                expected_media.extend_from_slice(&f[s.range.clone()]);
                samples += 1;
                duration += u64::from(s.duration);
            }
        }
    }
    let (layout, file) = build(&[], None);
    assert_eq!(top_level(&file), [*b"ftyp", *b"moov", *b"mdat"]);
    let mdat = find_path(&file, &[b"mdat"]).unwrap();
    assert_eq!(
        mdat,
        &expected_media[..],
        "the media, and nothing else, in order"
    );
    assert_eq!(layout.head().len() + expected_media.len(), file.len());

    let ts = info.tracks[0].timescale;
    assert!((layout.duration_secs() - duration as f64 / f64::from(ts)).abs() < 0.002);
    assert!(layout.duration_secs() > 2.0, "{}", layout.duration_secs());
    assert_eq!(layout.start_secs(), 0.0);

    let moov = find_path(&file, &[b"moov"]).unwrap();
    let mvhd = find_path(moov, &[b"mvhd"]).unwrap();
    assert_eq!(be_u32(&mvhd[12..]), 1000, "movie timescale");
    assert_eq!(
        u64::from(be_u32(&mvhd[16..])),
        (layout.duration_secs() * 1000.0).round() as u64
    );
    let stbl = find_path(moov, &[b"trak", b"mdia", b"minf", b"stbl"]).unwrap();
    let stsz = find_path(stbl, &[b"stsz"]).unwrap();
    assert_eq!(be_u32(&stsz[8..]) as usize, samples);
    let stss = find_path(stbl, &[b"stss"]).unwrap();
    assert_eq!(be_u32(&stss[8..]), 1, "the first sample is a sync sample");
    let stco = find_path(stbl, &[b"stco"]).unwrap();
    assert_eq!(be_u32(&stco[8..]) as usize, layout.head().len());
    let stts = find_path(stbl, &[b"stts"]).unwrap();
    let mut total = 0u64;
    for e in stts[8..].chunks(8) {
        total += u64::from(be_u32(e)) * u64::from(be_u32(&e[4..]));
    }
    assert_eq!(total, duration);
    assert!(
        find_path(moov, &[b"udta"]).is_none(),
        "no chapters asked for"
    );
}

#[test]
fn a_range_starts_on_the_keyframe_at_or_before_from_and_ends_before_to() {
    let (full, _) = build(&[], None);
    let (layout, file) = build(&[], Some((1.2, 2.0)));
    // The fragments start on keyframes at 0, 1 and 2 s; x264 puts none between them here.
    assert!(
        (layout.start_secs() - 1.0).abs() < 0.01,
        "{}",
        layout.start_secs()
    );
    assert!(
        (layout.duration_secs() - 1.0).abs() < 0.05,
        "{}",
        layout.duration_secs()
    );
    assert!(layout.len() < full.len());
    assert_eq!(top_level(&file), [*b"ftyp", *b"moov", *b"mdat"]);
    let stss = find_path(
        &file,
        &[b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stss"],
    )
    .unwrap();
    assert_eq!(be_u32(&stss[8..]), 1);

    // A range outside the recording, or backwards, is nothing to write.
    for (a, b) in [(50.0, 60.0), (2.0, 1.0), (f64::NAN, 1.0)] {
        let mut p = Progressive::new(INIT).unwrap();
        p.range(a, b);
        for f in FRAGMENTS {
            p.push_fragment(f).unwrap();
        }
        assert!(
            matches!(p.finish(), Err(Mp4Error::Empty { .. })),
            "{a}..{b}"
        );
    }
}

#[test]
fn chapters_are_written_as_nero_chpl_and_as_a_quicktime_chapter_track() {
    let (layout, file) = build(
        &[
            Chapter::new(1.5, "cord\nclamped"),
            Chapter::new(0.5, "first"),
            Chapter::new(99.0, "after the end"),
        ],
        None,
    );
    let titles: Vec<_> = layout.chapters().iter().map(|c| c.title.as_str()).collect();
    assert_eq!(titles, ["Start", "first", "cord clamped"]);
    let moov = find_path(&file, &[b"moov"]).unwrap();
    let chpl = find_path(moov, &[b"udta", b"chpl"]).unwrap();
    assert_eq!(chpl[8], 3, "chapter count");
    assert_eq!(&chpl[9..17], &0u64.to_be_bytes());
    assert_eq!(&chpl[18..23], b"Start");
    let traks = all_boxes(moov, b"trak");
    assert_eq!(traks.len(), 2);
    let chap = find_path(traks[0], &[b"tref", b"chap"]).unwrap();
    let text_tkhd = find_path(traks[1], &[b"tkhd"]).unwrap();
    assert_eq!(
        &chap[..4],
        &text_tkhd[12..16],
        "tref/chap names the text track"
    );
    assert_eq!(
        be_u32(text_tkhd) & 0xff_ffff,
        0,
        "the text track is disabled"
    );
    let hdlr = find_path(traks[1], &[b"mdia", b"hdlr"]).unwrap();
    assert_eq!(&hdlr[8..12], b"text");
    // The titles are text samples at the start of the mdat.
    let mdat = find_path(&file, &[b"mdat"]).unwrap();
    assert_eq!(&mdat[..7], b"\0\x05Start");
    let vtt = webvtt_chapters(layout.chapters(), layout.duration_secs());
    assert!(
        vtt.contains("00:00:01.500 --> 00:00:02.400\ncord clamped\n"),
        "{vtt}"
    );
}

/// Decrypted, but made by a box that may be hostile: never a panic, never an allocation
/// sized by a count in a box.
#[test]
fn mutated_gstreamer_data_gives_errors_not_panics() {
    let mut next = rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..3000 {
        let mut init = INIT.to_vec();
        let mut frags: Vec<Vec<u8>> = FRAGMENTS.iter().map(|f| f.to_vec()).collect();
        let target = (next() % 4) as usize;
        let data = if target == 3 {
            &mut init
        } else {
            &mut frags[target]
        };
        for _ in 0..1 + next() % 4 {
            let pos = (next() as usize) % data.len();
            data[pos] = next() as u8;
        }
        if next().is_multiple_of(4) {
            data.truncate((next() as usize) % (data.len() + 1));
        }
        let Ok(mut p) = Progressive::new(&init) else {
            continue;
        };
        if next().is_multiple_of(2) {
            p.range((next() % 30) as f64 / 10.0, (next() % 30) as f64 / 10.0);
        }
        p.chapters(&[Chapter::new(0.5, "x")]);
        if frags.iter().all(|f| p.push_fragment(f).is_ok())
            && let Ok(layout) = p.finish()
        {
            let file = layout.to_vec(&frags).unwrap();
            assert_eq!(file.len() as u64, layout.len());
        }
    }
}

#[test]
fn the_second_pass_refuses_another_fragment() {
    let mut p = Progressive::new(INIT).unwrap();
    for f in FRAGMENTS {
        p.push_fragment(f).unwrap();
    }
    let layout = p.finish().unwrap();
    assert!(layout.media(0, FRAGMENTS[1]).is_err());
    assert!(layout.media(3, FRAGMENTS[0]).is_err());
    assert!(layout.to_vec(&FRAGMENTS[..2]).is_err());
    assert_eq!(layout.media(1, FRAGMENTS[1]).unwrap().len(), 1);
}

// ---- hand-built boxes ----

/// An init segment: one video track (id 1, 90 kHz) and one AAC track (id 2, 48 kHz), with
/// trex defaults for the video track.
fn init_segment(trex_video: (u32, u32, u32)) -> Vec<u8> {
    let tkhd = |id: u32| {
        let mut b = vec![0u8; 8];
        b.extend_from_slice(&id.to_be_bytes());
        b.extend_from_slice(&[0; 4 + 4 + 8 + 8 + 36]);
        b.extend_from_slice(&(320u32 << 16).to_be_bytes());
        b.extend_from_slice(&(240u32 << 16).to_be_bytes());
        full_box(b"tkhd", 0, 3, &b)
    };
    let mdhd = |ts: u32| {
        let mut b = vec![0u8; 8];
        b.extend_from_slice(&ts.to_be_bytes());
        b.extend_from_slice(&[0, 0, 0, 0, 0x55, 0xc4, 0, 0]);
        full_box(b"mdhd", 0, 0, &b)
    };
    let hdlr = |h: &[u8; 4]| {
        let mut b = vec![0u8; 4];
        b.extend_from_slice(h);
        b.extend_from_slice(&[0; 13]);
        full_box(b"hdlr", 0, 0, &b)
    };
    let stsd = |entry: Vec<u8>| {
        let mut b = 1u32.to_be_bytes().to_vec();
        b.extend_from_slice(&entry);
        full_box(b"stsd", 0, 0, &b)
    };
    let mut avc1 = vec![0u8; 78];
    avc1.extend(bx(b"avcC", &[1, 0x4d, 0x40, 0x1f, 0xff, 0xe0]));
    let mut mp4a = vec![0u8; 28];
    // ES descriptor → decoder config (AAC, 0x40) → decoder specific info: AAC LC (2).
    let dsi = [5, 2, 0x12, 0x10];
    let mut dc = vec![4, (13 + dsi.len()) as u8, 0x40, 0x15];
    dc.extend_from_slice(&[0; 11]);
    dc.extend_from_slice(&dsi);
    let mut es = vec![3, (3 + dc.len()) as u8, 0, 1, 0];
    es.extend_from_slice(&dc);
    mp4a.extend(full_box(b"esds", 0, 0, &es));
    let trak = |id, h, ts, entry: Vec<u8>| {
        let stbl = bx(b"stbl", &stsd(entry));
        let minf = bx(b"minf", &stbl);
        let mdia = bx(b"mdia", &[mdhd(ts), hdlr(h), minf].concat());
        bx(b"trak", &[tkhd(id), mdia].concat())
    };
    let trex = |id: u32, (d, s, f): (u32, u32, u32)| {
        let mut b = id.to_be_bytes().to_vec();
        for v in [1, d, s, f] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        full_box(b"trex", 0, 0, &b)
    };
    let mvex = bx(
        b"mvex",
        &[trex(1, trex_video), trex(2, (1024, 0, 0))].concat(),
    );
    let moov = bx(
        b"moov",
        &[
            full_box(b"mvhd", 0, 0, &[0; 96]),
            trak(1, b"vide", 90_000, bx(b"avc1", &avc1)),
            trak(2, b"soun", 48_000, bx(b"mp4a", &mp4a)),
            mvex,
        ]
        .concat(),
    );
    [bx(b"ftyp", b"iso6\0\0\0\0iso6"), moov].concat()
}

/// A trun: flags, version, optional data offset, optional first-sample flags, per-sample
/// values (duration, size, flags, composition offset) of which the flags say which are there.
fn trun(
    version: u8,
    flags: u32,
    offset: Option<i32>,
    first: Option<u32>,
    samples: &[[u32; 4]],
) -> Vec<u8> {
    let mut b = (samples.len() as u32).to_be_bytes().to_vec();
    if let Some(o) = offset {
        b.extend_from_slice(&o.to_be_bytes());
    }
    if let Some(f) = first {
        b.extend_from_slice(&f.to_be_bytes());
    }
    for s in samples {
        for (bit, v) in [0x100, 0x200, 0x400, 0x800].iter().zip(s) {
            if flags & bit != 0 {
                b.extend_from_slice(&v.to_be_bytes());
            }
        }
    }
    full_box(b"trun", version, flags, &b)
}

/// moof(mfhd, traf(tfhd, tfdt v1, truns)) + mdat(data). `truns` gets the moof's size, to
/// compute data offsets.
fn fragment(
    tfhd: Vec<u8>,
    tfdt: Option<u64>,
    truns: impl Fn(usize) -> Vec<u8>,
    data: &[u8],
) -> Vec<u8> {
    let mfhd = full_box(b"mfhd", 0, 0, &1u32.to_be_bytes());
    let tfdt = tfdt
        .map(|t| full_box(b"tfdt", 1, 0, &t.to_be_bytes()))
        .unwrap_or_default();
    let moof = |moof_len| {
        let traf = bx(
            b"traf",
            &[tfhd.clone(), tfdt.clone(), truns(moof_len)].concat(),
        );
        bx(b"moof", &[mfhd.clone(), traf].concat())
    };
    let len = moof(0).len();
    [moof(len), bx(b"mdat", data)].concat()
}

fn tfhd(flags: u32, track: u32, fields: &[u32]) -> Vec<u8> {
    let mut b = track.to_be_bytes().to_vec();
    for f in fields {
        b.extend_from_slice(&f.to_be_bytes());
    }
    full_box(b"tfhd", 0, flags, &b)
}

const NON_SYNC: u32 = 0x0101_0000;

#[test]
fn defaults_from_trex_and_tfhd_and_per_sample_values_all_parse() {
    let init = InitInfo::parse(&init_segment((3000, 10, NON_SYNC))).unwrap();
    assert_eq!(
        init.mime_codecs().unwrap(),
        "video/mp4; codecs=\"avc1.4d401f,mp4a.40.2\""
    );
    let data: Vec<u8> = (0..40).collect();

    // Everything from trex, first-sample-flags making the first a keyframe,
    // default-base-is-moof with a data offset.
    let f = fragment(
        tfhd(0x2_0000, 1, &[]),
        Some(900),
        |m| trun(0, 0x05, Some(m as i32 + 8), Some(0x0200_0000), &[[0; 4]; 3]),
        &data,
    );
    let t = parse_fragment(&init, &f, 0).unwrap();
    assert_eq!(t.len(), 1);
    let s = &t[0].samples;
    assert_eq!(s.len(), 3);
    assert_eq!(
        s.iter()
            .map(|s| (s.decode_time, s.duration, s.size, s.sync))
            .collect::<Vec<_>>(),
        [
            (900, 3000, 10, true),
            (3900, 3000, 10, false),
            (6900, 3000, 10, false)
        ]
    );
    assert_eq!(&f[s[0].range.clone()], &data[..10]);

    // tfhd defaults over trex, no base flags (the data follows the moof), per-sample sizes
    // and composition offsets of version 1 (negative).
    let f = fragment(
        tfhd(0x08 | 0x20, 1, &[1500, 0]),
        None,
        |m| {
            trun(
                1,
                0x01 | 0x200 | 0x800,
                Some(m as i32 + 8),
                None,
                &[[0, 4, 0, (-1500i32) as u32], [0, 6, 0, 3000]],
            )
        },
        &data,
    );
    let t = parse_fragment(&init, &f, 0).unwrap();
    let s = &t[0].samples;
    assert_eq!(t[0].base_decode_time, None);
    assert_eq!(
        s.iter()
            .map(|s| (
                s.decode_time,
                s.duration,
                s.size,
                s.sync,
                s.composition_offset
            ))
            .collect::<Vec<_>>(),
        [(0, 1500, 4, true, -1500), (1500, 1500, 6, true, 3000)]
    );
    assert_eq!(&f[s[1].range.clone()], &data[4..10]);

    // Explicit base-data-offset (relative to the fragment), everything per sample, two truns
    // (the second without a data offset continues after the first).
    let f = fragment(
        tfhd(0x01, 1, &[0, 0]),
        Some(0),
        |m| {
            let all = 0x100 | 0x200 | 0x400 | 0x800;
            let mut base = tfhd(0x01, 1, &[0, (m + 8) as u32]);
            base.clear();
            [
                trun(
                    0,
                    0x01 | all,
                    Some(m as i32 + 8),
                    None,
                    &[[100, 5, 0, 0], [100, 5, NON_SYNC, 200]],
                ),
                trun(0, all, None, None, &[[100, 7, NON_SYNC, 0]]),
            ]
            .concat()
        },
        &data,
    );
    let t = parse_fragment(&init, &f, 0).unwrap();
    let s = &t[0].samples;
    assert_eq!(s.len(), 3);
    assert_eq!(&f[s[2].range.clone()], &data[10..17]);
    assert_eq!(s[2].decode_time, 200);
    assert_eq!(s[1].composition_offset, 200);
    assert!(s[0].sync && !s[1].sync && !s[2].sync);
}

#[test]
fn video_and_audio_tracks_are_interleaved_and_written_with_their_own_tables() {
    let init = init_segment((3000, 0, NON_SYNC));
    let data: Vec<u8> = (0..64).collect();
    let frag = |t: u64| {
        let mfhd = full_box(b"mfhd", 0, 0, &1u32.to_be_bytes());
        let traf = |track, tfdt: u64, truns: Vec<u8>| {
            bx(
                b"traf",
                &[
                    tfhd(0x2_0000, track, &[]),
                    full_box(b"tfdt", 1, 0, &tfdt.to_be_bytes()),
                    truns,
                ]
                .concat(),
            )
        };
        let moof = |m: usize| {
            bx(
                b"moof",
                &[
                    mfhd.clone(),
                    traf(
                        1,
                        t * 3000,
                        trun(
                            0,
                            0x01 | 0x04 | 0x200,
                            Some(m as i32 + 8),
                            Some(0),
                            &[[0, 8, 0, 0], [0, 8, 0, 0]],
                        ),
                    ),
                    traf(
                        2,
                        t * 1600,
                        trun(
                            0,
                            0x01 | 0x200,
                            Some(m as i32 + 8 + 16),
                            None,
                            &[[0, 4, 0, 0], [0, 4, 0, 0], [0, 4, 0, 0]],
                        ),
                    ),
                ]
                .concat(),
            )
        };
        let len = moof(0).len();
        [moof(len), bx(b"mdat", &data[..28])].concat()
    };
    let frags = [frag(0), frag(2), frag(4)];
    let mut p = Progressive::new(&init).unwrap();
    for f in &frags {
        p.push_fragment(f).unwrap();
    }
    let layout = p.finish().unwrap();
    let file = layout.to_vec(&frags).unwrap();
    let moov = find_path(&file, &[b"moov"]).unwrap();
    let traks = all_boxes(moov, b"trak");
    assert_eq!(traks.len(), 2);
    assert!(find_path(traks[0], &[b"mdia", b"minf", b"vmhd"]).is_some());
    assert!(find_path(traks[1], &[b"mdia", b"minf", b"smhd"]).is_some());
    assert!(find_path(traks[1], &[b"mdia", b"minf", b"stbl", b"stss"]).is_none());
    // Audio: 9 samples of 1024 at 48 kHz = 0.192 s; video 6 × 3000 at 90 kHz = 0.2 s.
    assert!(
        (layout.duration_secs() - 0.2).abs() < 0.0015,
        "{}",
        layout.duration_secs()
    );
    let mdat = find_path(&file, &[b"mdat"]).unwrap();
    assert_eq!(mdat, &data[..28].repeat(3)[..]);
    let stco = |t: &[u8]| -> Vec<u32> {
        let b = find_path(t, &[b"mdia", b"minf", b"stbl", b"stco"]).unwrap();
        b[8..].chunks(4).map(be_u32).collect()
    };
    let h = layout.head().len() as u32;
    assert_eq!(stco(traks[0]), [h, h + 28, h + 56]);
    assert_eq!(stco(traks[1]), [h + 16, h + 44, h + 72]);
}

#[test]
fn each_trun_data_offset_counts_from_the_moof_when_runs_of_two_tracks_interleave() {
    // Regression: isofmp4mux writes a fragment with sound as runs of video and sound taking
    // turns in the mdat, every trun with its own offset from the moof. The second video run's
    // offset was added to where the first run ended, and the fragment was refused.
    let init = InitInfo::parse(&init_segment((3000, 0, NON_SYNC))).unwrap();
    let data: Vec<u8> = (0..24).collect();
    let mfhd = full_box(b"mfhd", 0, 0, &1u32.to_be_bytes());
    let traf = |track, truns: Vec<u8>| {
        bx(
            b"traf",
            &[
                tfhd(0x2_0000, track, &[]),
                full_box(b"tfdt", 1, 0, &0u64.to_be_bytes()),
                truns,
            ]
            .concat(),
        )
    };
    let run =
        |at: usize, size: u32| trun(0, 0x01 | 0x200, Some(at as i32), None, &[[0, size, 0, 0]]);
    let moof = |m: usize| {
        let d = m + 8;
        bx(
            b"moof",
            &[
                mfhd.clone(),
                traf(1, [run(d, 8), run(d + 12, 8)].concat()),
                traf(2, [run(d + 8, 4), run(d + 20, 4)].concat()),
            ]
            .concat(),
        )
    };
    let len = moof(0).len();
    let f = [moof(len), bx(b"mdat", &data)].concat();
    let t = parse_fragment(&init, &f, 0).unwrap();
    let bytes = |track: usize| -> Vec<&[u8]> {
        t[track]
            .samples
            .iter()
            .map(|s| &f[s.range.clone()])
            .collect()
    };
    assert_eq!(bytes(0), [&data[0..8], &data[12..20]]);
    assert_eq!(bytes(1), [&data[8..12], &data[20..24]]);
}

#[test]
fn one_view_keeps_the_chosen_tracks_with_their_bytes_times_and_keyframes() {
    let init = init_segment((3000, 0, NON_SYNC));
    let info = InitInfo::parse(&init).unwrap();
    let data: Vec<u8> = (0..24).collect();
    let mfhd = full_box(b"mfhd", 0, 0, &7u32.to_be_bytes());
    let traf = |track, tfdt: u64, truns: Vec<u8>| {
        bx(
            b"traf",
            &[
                tfhd(0x2_0000, track, &[]),
                full_box(b"tfdt", 1, 0, &tfdt.to_be_bytes()),
                truns,
            ]
            .concat(),
        )
    };
    let moof = |m: usize| {
        let d = m as i32 + 8;
        bx(
            b"moof",
            &[
                mfhd.clone(),
                // Video: a keyframe then a frame that is not, interleaved with the sound.
                traf(
                    1,
                    90_000,
                    [
                        trun(0, 0x01 | 0x04 | 0x200, Some(d), Some(0), &[[0, 8, 0, 0]]),
                        trun(
                            1,
                            0x01 | 0x200 | 0x800,
                            Some(d + 12),
                            None,
                            &[[0, 8, 0, -3000i32 as u32]],
                        ),
                    ]
                    .concat(),
                ),
                traf(
                    2,
                    48_000,
                    trun(0, 0x01 | 0x200, Some(d + 8), None, &[[0, 4, 0, 0]]),
                ),
            ]
            .concat(),
        )
    };
    let len = moof(0).len();
    let f = [moof(len), bx(b"mdat", &data[..20])].concat();
    let before = parse_fragment(&info, &f, 0).unwrap();

    for (keep, track) in [(1u32, 0usize), (2, 1)] {
        let view_init = select_init(&init, &[keep]).unwrap();
        let view_info = InitInfo::parse(&view_init).unwrap();
        assert_eq!(view_info.tracks.len(), 1);
        assert_eq!(view_info.tracks[0], info.tracks[track]);
        let trex = find_path(&view_init, &[b"moov", b"mvex", b"trex"]).unwrap();
        assert_eq!(be_u32(&trex[4..]), keep, "only the chosen track's defaults");
        assert_eq!(
            all_boxes(find_path(&view_init, &[b"moov", b"mvex"]).unwrap(), b"trex").len(),
            1
        );

        let view = select_fragment(&info, &f, &[keep], 0).unwrap();
        assert_eq!(top_level(&view), [*b"moof", *b"mdat"]);
        let mfhd = find_path(&view, &[b"moof", b"mfhd"]).unwrap();
        assert_eq!(be_u32(&mfhd[4..]), 7, "the sequence number is kept");
        let after = parse_fragment(&view_info, &view, 0).unwrap();
        assert_eq!(after.len(), 1);
        let (a, b) = (&after[0], &before[track]);
        assert_eq!(a.track_id, keep);
        assert_eq!(a.base_decode_time, b.base_decode_time);
        assert_eq!(a.samples.len(), b.samples.len());
        for (x, y) in a.samples.iter().zip(&b.samples) {
            assert_eq!(
                (x.decode_time, x.duration, x.sync, x.composition_offset),
                (y.decode_time, y.duration, y.sync, y.composition_offset)
            );
            assert_eq!(&view[x.range.clone()], &f[y.range.clone()]);
        }
    }
    assert!(before[0].samples[0].sync && !before[0].samples[1].sync);

    // Both tracks again: the same samples, now one run each.
    let both = select_fragment(&info, &f, &[1, 2], 0).unwrap();
    let after = parse_fragment(&info, &both, 0).unwrap();
    assert_eq!(
        after.iter().map(|t| t.samples.len()).collect::<Vec<_>>(),
        [2, 1]
    );
    assert_eq!(
        find_path(&both, &[b"mdat"]).unwrap(),
        [&data[0..8], &data[12..20], &data[8..12]].concat()
    );

    for bad in [&[][..], &[3][..]] {
        assert!(select_init(&init, bad).is_err());
        assert!(select_fragment(&info, &f, bad, 0).is_err());
    }
}

#[test]
fn one_view_of_a_fragment_whose_samples_share_bytes_is_refused_not_multiplied() {
    // Every trun points at the same 4000 bytes: parsed, it is 300 samples of 4000 bytes each
    // from a fragment of about 10 KB. Rewritten, it would be 1.2 MB (and a crafted one of 600 KB,
    // gigabytes).
    let init = init_segment((3000, 0, NON_SYNC));
    let info = InitInfo::parse(&init).unwrap();
    let data = vec![7u8; 4000];
    let runs = |m: usize| -> Vec<u8> {
        (0..300)
            .flat_map(|_| {
                trun(
                    0,
                    0x01 | 0x200,
                    Some(m as i32 + 8),
                    None,
                    &[[0, 4000, 0, 0]],
                )
            })
            .collect()
    };
    let f = fragment(tfhd(0x2_0000, 1, &[]), Some(0), runs, &data);
    assert_eq!(parse_fragment(&info, &f, 0).unwrap()[0].samples.len(), 300);
    let e = select_fragment(&info, &f, &[1], 3).unwrap_err();
    assert_eq!(
        e.to_string(),
        "fragment 3: too large to rewrite as one view"
    );
}

#[test]
fn one_view_of_mutated_data_is_an_error_not_a_panic() {
    let info = InitInfo::parse(INIT).unwrap();
    let id = info.tracks[0].id;
    let mut next = rng(7);
    for _ in 0..2000 {
        let mut init = INIT.to_vec();
        let mut frag = FRAGMENTS[1].to_vec();
        for _ in 0..4 {
            let i = next() as usize % init.len();
            init[i] = next() as u8;
            let j = next() as usize % frag.len();
            frag[j] = next() as u8;
        }
        let _ = select_init(&init, &[id]);
        let _ = select_fragment(&info, &frag, &[id], 1);
    }
}

#[test]
fn a_gap_in_decode_time_lengthens_the_sample_before_it_and_going_back_is_refused() {
    // Regression (a real V4L2 camera, vivid in the VM lab): a fragment's last sample duration is
    // the muxer's estimate, and the next fragment may start a little before it ends. That
    // overlap shortens the sample; only a start at or before the sample itself goes back.
    let init = init_segment((3000, 4, 0));
    let data = [7u8; 8];
    let frag = |t| {
        fragment(
            tfhd(0x2_0000, 1, &[]),
            Some(t),
            |m| trun(0, 0x01, Some(m as i32 + 8), None, &[[0; 4]; 2]),
            &data,
        )
    };
    let mut p = Progressive::new(&init).unwrap();
    p.push_fragment(&frag(6000)).unwrap();
    p.push_fragment(&frag(18000)).unwrap(); // 6000 of hole
    let layout = p.finish().unwrap();
    assert!((layout.duration_secs() - 18000.0 / 90000.0).abs() < 0.0015);
    let mut p = Progressive::new(&init).unwrap();
    p.push_fragment(&frag(6000)).unwrap();
    p.push_fragment(&frag(11000)).unwrap(); // 1000 before the end of the sample at 9000
    let layout = p.finish().unwrap();
    assert!((layout.duration_secs() - 11000.0 / 90000.0).abs() < 0.0015);
    let mut p = Progressive::new(&init).unwrap();
    p.push_fragment(&frag(6000)).unwrap();
    let err = p.push_fragment(&frag(9000)).unwrap_err();
    assert!(
        matches!(
            err,
            Mp4Error::Track {
                fragment: 1,
                track: 1,
                ..
            }
        ),
        "{err}"
    );
    // Regression: the writer went on after a refused fragment, and the next one took its
    // number, so a second pass given every fragment would write the wrong bytes.
    let err = p.push_fragment(&frag(12000)).unwrap_err();
    assert!(matches!(err, Mp4Error::Refused { fragment: 1 }), "{err}");
    let err = p.finish().unwrap_err();
    assert!(matches!(err, Mp4Error::Refused { fragment: 1 }), "{err}");
}

#[test]
fn hostile_counts_sizes_and_offsets_are_refused() {
    let init = InitInfo::parse(&init_segment((3000, 4, 0))).unwrap();
    let data = [0u8; 16];
    let parse = |f: &[u8]| parse_fragment(&init, f, 7);

    // A sample count of 2^32-1 with no per-sample fields: refused before anything is reserved.
    let mut huge = trun(0, 0x01, Some(0), None, &[]);
    huge[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
    let f = fragment(tfhd(0x2_0000, 1, &[]), Some(0), |_| huge.clone(), &data);
    let err = parse(&f).unwrap_err();
    assert!(
        matches!(
            err,
            Mp4Error::Field {
                path: "moof/traf/trun",
                ..
            }
        ),
        "{err}"
    );

    // Samples past the mdat, or a data offset before the fragment.
    let f = fragment(
        tfhd(0x2_0000, 1, &[]),
        Some(0),
        |m| trun(0, 0x01, Some(m as i32 + 8), None, &[[0; 4]; 5]),
        &data,
    );
    assert!(matches!(
        parse(&f).unwrap_err(),
        Mp4Error::Sample {
            fragment: 7,
            track: 1,
            sample: 4,
            ..
        }
    ));
    let f = fragment(
        tfhd(0x2_0000, 1, &[]),
        Some(0),
        |_| trun(0, 0x01, Some(-100), None, &[[0; 4]]),
        &data,
    );
    assert!(parse(&f).is_err());
    // Bytes inside the fragment but in the moof, not the mdat.
    let f = fragment(
        tfhd(0x2_0000, 1, &[]),
        Some(0),
        |_| trun(0, 0x01, Some(8), None, &[[0; 4]]),
        &data,
    );
    assert!(matches!(parse(&f).unwrap_err(), Mp4Error::Sample { .. }));
    // A base-data-offset beyond any address.
    let f = fragment(
        tfhd(0x01, 1, &[u32::MAX, u32::MAX]),
        Some(0),
        |_| trun(0, 0, None, None, &[[0; 4]]),
        &data,
    );
    assert!(parse(&f).is_err());
    // An unknown track.
    let f = fragment(
        tfhd(0x2_0000, 9, &[]),
        Some(0),
        |m| trun(0, 0x01, Some(m as i32 + 8), None, &[[0; 4]]),
        &data,
    );
    assert!(matches!(
        parse(&f).unwrap_err(),
        Mp4Error::Track { track: 9, .. }
    ));

    // Box sizes: larger than the container, a 64-bit size of 2^64-1, smaller than the header,
    // a header cut short.
    let mut big = bx(b"moof", &[0; 8]);
    big[3] = 200;
    assert!(matches!(parse(&big).unwrap_err(), Mp4Error::BoxSize { .. }));
    let mut large = vec![0, 0, 0, 1];
    large.extend_from_slice(b"moof");
    large.extend_from_slice(&u64::MAX.to_be_bytes());
    assert!(matches!(
        parse(&large).unwrap_err(),
        Mp4Error::BoxSize { size: u64::MAX, .. }
    ));
    assert!(matches!(
        parse(&[0, 0, 0, 4, b'm', b'o', b'o', b'f']).unwrap_err(),
        Mp4Error::BoxSize { .. }
    ));
    assert!(matches!(
        parse(&[0, 0, 0]).unwrap_err(),
        Mp4Error::HeaderCut { .. }
    ));
    // Size 0 runs to the end of the container: a last mdat may be written so.
    let mut f = fragment(
        tfhd(0x2_0000, 1, &[]),
        Some(0),
        |m| trun(0, 0x01, Some(m as i32 + 8), None, &[[0; 4]; 4]),
        &data,
    );
    let mdat_at = f.len() - data.len() - 8;
    f[mdat_at..mdat_at + 4].copy_from_slice(&[0; 4]);
    assert_eq!(parse(&f).unwrap()[0].samples.len(), 4);
    // Deep nesting is not walked: only the spelled-out path is.
    let mut deep = bx(b"traf", &[]);
    for _ in 0..10_000 {
        deep = bx(b"moof", &deep);
    }
    assert!(parse(&deep).unwrap().is_empty());
    // Every prefix of a valid fragment is an error or fewer samples, never a panic.
    let f = fragment(
        tfhd(0x2_0000, 1, &[]),
        Some(0),
        |m| trun(0, 0x01, Some(m as i32 + 8), None, &[[0; 4]; 4]),
        &data,
    );
    for n in 0..f.len() {
        let _ = parse(&f[..n]);
    }
    // An init segment without a moov, or cut short.
    assert!(matches!(
        InitInfo::parse(b"").unwrap_err(),
        Mp4Error::Missing { path: "moov" }
    ));
    let init_bytes = init_segment((0, 0, 0));
    for n in 0..init_bytes.len() {
        let _ = InitInfo::parse(&init_bytes[..n]);
    }
}
