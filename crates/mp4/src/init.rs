//! The init segment (`ftyp` + `moov`): what each track is, and the codecs string a browser's
//! Media Source Extensions need to play it.

use crate::Mp4Error;
use crate::error::fourcc;
use crate::read::{Reader, boxes, find, require};

/// What a track holds, from its `hdlr` box.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// `vide`.
    Video,
    /// `soun`.
    Audio,
    /// Anything else (subtitles, metadata): indexed, written with a null media header.
    Other([u8; 4]),
}

/// Sample defaults of a track from `moov/mvex/trex`, used where a fragment gives none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackDefaults {
    /// Default sample duration, in the track's timescale.
    pub duration: u32,
    /// Default sample size in bytes.
    pub size: u32,
    /// Default sample flags (ISO/IEC 14496-12 §8.8.3.1).
    pub flags: u32,
}

/// One track of an init segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Track {
    /// The track id fragments refer to.
    pub id: u32,
    /// Video, audio or other.
    pub handler: Handler,
    /// Units per second of its decode times and durations (from `mdhd`).
    pub timescale: u32,
    /// Packed ISO-639-2 language of `mdhd`.
    pub language: u16,
    /// Width and height as 16.16 fixed point, from `tkhd` (0 for audio).
    pub width: u32,
    /// See `width`.
    pub height: u32,
    /// The whole `stsd` box, copied into the progressive file as it is.
    pub stsd: Vec<u8>,
    /// Defaults from `trex`.
    pub defaults: TrackDefaults,
}

impl Track {
    /// The first sample entry (e.g. the `avc1` box, header included).
    pub fn sample_entry(&self) -> Option<&[u8]> {
        // stsd: 8-byte header, version/flags, entry count, then the entries.
        let entries = self.stsd.get(16..)?;
        let b = boxes(entries, "moov/trak/mdia/minf/stbl/stsd")
            .next()?
            .ok()?;
        Some(&entries[b.start..b.end()])
    }

    /// The RFC 6381 codecs string of this track, e.g. `avc1.64001f`, `mp4a.40.2` or `opus`.
    pub fn codec(&self) -> Result<String, Mp4Error> {
        let unknown = |entry: &[u8; 4]| Mp4Error::Codec {
            track: self.id,
            entry: fourcc(entry),
        };
        let entry = self.sample_entry().ok_or(Mp4Error::Missing {
            path: "moov/trak/mdia/minf/stbl/stsd entry",
        })?;
        let mut kind = [0u8; 4];
        kind.copy_from_slice(&entry[4..8]);
        let body = &entry[8..];
        match &kind {
            b"avc1" | b"avc3" => {
                // VisualSampleEntry: 6 reserved, data reference index, then 70 bytes of fields.
                let children = body.get(78..).ok_or(Mp4Error::Field {
                    path: "stsd/avc1",
                    problem: "sample entry cut short",
                })?;
                let avcc = require(children, b"avcC", "stsd/avc1", "stsd/avc1/avcC")?;
                let mut r = Reader::new(avcc.body, "stsd/avc1/avcC");
                r.skip(1)?;
                let (profile, compat, level) = (r.u8()?, r.u8()?, r.u8()?);
                Ok(format!(
                    "{}.{profile:02x}{compat:02x}{level:02x}",
                    fourcc(&kind)
                ))
            }
            b"mp4a" => {
                // AudioSampleEntry: 6 reserved, data reference index, version; QuickTime's
                // versions 1 and 2 carry 16 and 36 more bytes before the children.
                let mut r = Reader::new(body, "stsd/mp4a");
                r.skip(8)?;
                let version = r.u16()?;
                r.skip(18)?;
                match version {
                    0 => {}
                    1 => r.skip(16)?,
                    2 => r.skip(36)?,
                    _ => {
                        return Err(Mp4Error::Field {
                            path: "stsd/mp4a",
                            problem: "unknown sound sample entry version",
                        });
                    }
                }
                let esds = require(r.rest(), b"esds", "stsd/mp4a", "stsd/mp4a/esds")?;
                let (oti, aot) = esds_object_types(esds.body)?;
                Ok(match aot {
                    Some(aot) => format!("mp4a.{oti:02x}.{aot}"),
                    None => format!("mp4a.{oti:02x}"),
                })
            }
            b"Opus" => Ok("opus".into()),
            b"fLaC" => Ok("flac".into()),
            other => Err(unknown(other)),
        }
    }
}

/// Reads an MPEG-4 descriptor's tag and length (up to 4 bytes of 7 bits).
fn descriptor<'a>(r: &mut Reader<'a>) -> Result<(u8, &'a [u8]), Mp4Error> {
    let tag = r.u8()?;
    let mut len = 0usize;
    for _ in 0..4 {
        let b = r.u8()?;
        len = (len << 7) | usize::from(b & 0x7f);
        if b & 0x80 == 0 {
            break;
        }
    }
    Ok((tag, r.bytes(len)?))
}

/// From `esds`: the object type indication and, for AAC (0x40), the audio object type.
fn esds_object_types(esds: &[u8]) -> Result<(u8, Option<u8>), Mp4Error> {
    const PATH: &str = "stsd/mp4a/esds";
    let mut r = Reader::new(esds, PATH);
    r.skip(4)?;
    let (tag, es) = descriptor(&mut r)?;
    if tag != 3 {
        return Err(Mp4Error::Field {
            path: PATH,
            problem: "no ES descriptor",
        });
    }
    let mut r = Reader::new(es, PATH);
    r.skip(2)?;
    let flags = r.u8()?;
    if flags & 0x80 != 0 {
        r.skip(2)?;
    }
    if flags & 0x40 != 0 {
        let n = r.u8()?;
        r.skip(usize::from(n))?;
    }
    if flags & 0x20 != 0 {
        r.skip(2)?;
    }
    let (tag, dc) = descriptor(&mut r)?;
    if tag != 4 {
        return Err(Mp4Error::Field {
            path: PATH,
            problem: "no decoder config descriptor",
        });
    }
    let mut r = Reader::new(dc, PATH);
    let oti = r.u8()?;
    r.skip(12)?;
    if oti != 0x40 || r.remaining() == 0 {
        return Ok((oti, None));
    }
    let (tag, dsi) = descriptor(&mut r)?;
    if tag != 5 || dsi.is_empty() {
        return Ok((oti, None));
    }
    let mut aot = dsi[0] >> 3;
    if aot == 31 {
        // Escape: 6 more bits follow.
        let next = *dsi.get(1).ok_or(Mp4Error::Field {
            path: PATH,
            problem: "audio specific config cut short",
        })?;
        aot = 32 + (((dsi[0] & 0x07) << 3) | (next >> 5));
    }
    Ok((oti, Some(aot)))
}

/// What an init segment says: its tracks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitInfo {
    /// The tracks, in the order of the `trak` boxes.
    pub tracks: Vec<Track>,
}

impl InitInfo {
    /// Parses an init segment (`ftyp` + `moov`, as a fragmenting muxer writes it).
    pub fn parse(init: &[u8]) -> Result<InitInfo, Mp4Error> {
        let moov = require(init, b"moov", "init segment", "moov")?;
        let mut tracks = Vec::new();
        for trak in boxes(moov.body, "moov") {
            let trak = trak?;
            if &trak.kind == b"trak" {
                tracks.push(parse_trak(trak.body)?);
            }
        }
        if tracks.is_empty() {
            return Err(Mp4Error::Missing { path: "moov/trak" });
        }
        for (i, t) in tracks.iter().enumerate() {
            if tracks[..i].iter().any(|o| o.id == t.id) {
                return Err(Mp4Error::Field {
                    path: "moov/trak/tkhd",
                    problem: "two tracks with the same id",
                });
            }
        }
        if let Some(mvex) = find(moov.body, b"mvex", "moov")? {
            for trex in boxes(mvex.body, "moov/mvex") {
                let trex = trex?;
                if &trex.kind != b"trex" {
                    continue;
                }
                let mut r = Reader::new(trex.body, "moov/mvex/trex");
                r.version_flags()?;
                let id = r.u32()?;
                r.skip(4)?;
                let defaults = TrackDefaults {
                    duration: r.u32()?,
                    size: r.u32()?,
                    flags: r.u32()?,
                };
                if let Some(t) = tracks.iter_mut().find(|t| t.id == id) {
                    t.defaults = defaults;
                }
            }
        }
        Ok(InitInfo { tracks })
    }

    /// The track with this id.
    pub fn track(&self, id: u32) -> Option<&Track> {
        self.tracks.iter().find(|t| t.id == id)
    }

    /// The MIME type with codecs that a browser's `MediaSource.addSourceBuffer` takes, e.g.
    /// `video/mp4; codecs="avc1.64001f,mp4a.40.2"`; `audio/mp4` when there is no video.
    pub fn mime_codecs(&self) -> Result<String, Mp4Error> {
        let mut codecs = Vec::new();
        for t in &self.tracks {
            if matches!(t.handler, Handler::Video | Handler::Audio) {
                codecs.push(t.codec()?);
            }
        }
        if codecs.is_empty() {
            return Err(Mp4Error::Missing {
                path: "moov/trak of video or audio",
            });
        }
        let media = if self.tracks.iter().any(|t| t.handler == Handler::Video) {
            "video/mp4"
        } else {
            "audio/mp4"
        };
        Ok(format!("{media}; codecs=\"{}\"", codecs.join(",")))
    }
}

fn parse_trak(trak: &[u8]) -> Result<Track, Mp4Error> {
    let tkhd = require(trak, b"tkhd", "moov/trak", "moov/trak/tkhd")?;
    let mut r = Reader::new(tkhd.body, "moov/trak/tkhd");
    let (version, _) = r.version_flags()?;
    r.skip(if version == 1 { 16 } else { 8 })?;
    let id = r.u32()?;
    r.skip(4)?;
    r.skip(if version == 1 { 8 } else { 4 })?;
    // reserved 8, layer, alternate group, volume, reserved 2, matrix 36
    r.skip(8 + 2 + 2 + 2 + 2 + 36)?;
    let (width, height) = (r.u32()?, r.u32()?);
    if id == 0 {
        return Err(Mp4Error::Field {
            path: "moov/trak/tkhd",
            problem: "track id 0",
        });
    }

    let mdia = require(trak, b"mdia", "moov/trak", "moov/trak/mdia")?;
    let mdhd = require(mdia.body, b"mdhd", "moov/trak/mdia", "moov/trak/mdia/mdhd")?;
    let mut r = Reader::new(mdhd.body, "moov/trak/mdia/mdhd");
    let (version, _) = r.version_flags()?;
    r.skip(if version == 1 { 16 } else { 8 })?;
    let timescale = r.u32()?;
    r.skip(if version == 1 { 8 } else { 4 })?;
    let language = r.u16()?;
    if timescale == 0 {
        return Err(Mp4Error::Field {
            path: "moov/trak/mdia/mdhd",
            problem: "timescale 0",
        });
    }
    let hdlr = require(mdia.body, b"hdlr", "moov/trak/mdia", "moov/trak/mdia/hdlr")?;
    let mut r = Reader::new(hdlr.body, "moov/trak/mdia/hdlr");
    r.skip(8)?;
    let mut kind = [0u8; 4];
    kind.copy_from_slice(r.bytes(4)?);
    let handler = match &kind {
        b"vide" => Handler::Video,
        b"soun" => Handler::Audio,
        _ => Handler::Other(kind),
    };
    let minf = require(mdia.body, b"minf", "moov/trak/mdia", "moov/trak/mdia/minf")?;
    let stbl = require(
        minf.body,
        b"stbl",
        "moov/trak/mdia/minf",
        "moov/trak/mdia/minf/stbl",
    )?;
    let stsd = require(
        stbl.body,
        b"stsd",
        "moov/trak/mdia/minf/stbl",
        "moov/trak/mdia/minf/stbl/stsd",
    )?;
    let mut r = Reader::new(stsd.body, "moov/trak/mdia/minf/stbl/stsd");
    r.version_flags()?;
    if r.u32()? == 0 {
        return Err(Mp4Error::Field {
            path: "moov/trak/mdia/minf/stbl/stsd",
            problem: "no sample entry",
        });
    }
    // The whole box, header included; always 8-byte header form when copied.
    let mut copy = Vec::with_capacity(stsd.body.len() + 8);
    let size = u32::try_from(stsd.body.len() + 8).map_err(|_| Mp4Error::Field {
        path: "moov/trak/mdia/minf/stbl/stsd",
        problem: "larger than 4 GiB",
    })?;
    copy.extend_from_slice(&size.to_be_bytes());
    copy.extend_from_slice(b"stsd");
    copy.extend_from_slice(stsd.body);
    Ok(Track {
        id,
        handler,
        timescale,
        language,
        width,
        height,
        stsd: copy,
        defaults: TrackDefaults::default(),
    })
}
