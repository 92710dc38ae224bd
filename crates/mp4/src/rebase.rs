//! Rewriting a fragment's decode time in place: `moof` → `traf` → `tfdt`.
//!
//! A recording starts with pre-roll captured long after the pipeline started, so its first
//! fragment's decode time is far from zero; a fragmented file played as it is shows a long blank
//! lead-in or a wrong duration. [`rebase_decode_time`] makes such a stream start at 0 (the
//! [`crate::Progressive`] writer rebases by itself and does not need it).

use std::ops::Range;

use crate::Mp4Error;
use crate::read::{be_u32, be_u64, boxes};

/// Payload ranges of every `tfdt` box under `moof/traf`.
fn tfdts(data: &[u8]) -> Result<Vec<Range<usize>>, Mp4Error> {
    let mut found = Vec::new();
    for moof in boxes(data, "fragment") {
        let moof = moof?;
        if &moof.kind != b"moof" {
            continue;
        }
        for traf in boxes(moof.body, "moof") {
            let traf = traf?;
            if &traf.kind != b"traf" {
                continue;
            }
            for b in boxes(traf.body, "moof/traf") {
                let b = b?;
                if &b.kind == b"tfdt" {
                    let start = moof.body_start + traf.body_start + b.body_start;
                    found.push(start..start + b.body.len());
                }
            }
        }
    }
    if found.is_empty() {
        return Err(Mp4Error::Missing {
            path: "moof/traf/tfdt",
        });
    }
    Ok(found)
}

fn read_tfdt(p: &[u8]) -> Result<u64, Mp4Error> {
    match p.first() {
        Some(1) if p.len() >= 12 => Ok(be_u64(&p[4..12])),
        Some(0) if p.len() >= 8 => Ok(u64::from(be_u32(&p[4..8]))),
        _ => Err(Mp4Error::Field {
            path: "moof/traf/tfdt",
            problem: "unknown version or cut short",
        }),
    }
}

/// The decode time of the first track fragment.
pub fn first_decode_time(fragment: &[u8]) -> Result<u64, Mp4Error> {
    let t = tfdts(fragment)?;
    read_tfdt(&fragment[t[0].clone()])
}

/// Subtracts `base` from every track fragment's decode time, in place. On error nothing is
/// changed.
pub fn rebase_decode_time(fragment: &mut [u8], base: u64) -> Result<(), Mp4Error> {
    let ranges = tfdts(fragment)?;
    let mut new = Vec::with_capacity(ranges.len());
    for r in &ranges {
        let t = read_tfdt(&fragment[r.clone()])?;
        new.push(t.checked_sub(base).ok_or(Mp4Error::Field {
            path: "moof/traf/tfdt",
            problem: "decode time before the base it is rebased on",
        })?);
    }
    for (r, t) in ranges.into_iter().zip(new) {
        let p = &mut fragment[r];
        if p[0] == 1 {
            p[4..12].copy_from_slice(&t.to_be_bytes());
        } else {
            // Version 0 holds 32 bits; a smaller value still fits.
            let t = u32::try_from(t).map_err(|_| Mp4Error::Field {
                path: "moof/traf/tfdt",
                problem: "rebased decode time does not fit version 0",
            })?;
            p[4..8].copy_from_slice(&t.to_be_bytes());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::bx;

    fn fragment(tfdt_v1: u64) -> Vec<u8> {
        let mut tfdt = vec![1, 0, 0, 0];
        tfdt.extend_from_slice(&tfdt_v1.to_be_bytes());
        let traf = [
            bx(b"tfhd", &[0; 8]),
            bx(b"tfdt", &tfdt),
            bx(b"trun", &[0; 12]),
        ]
        .concat();
        let moof = [bx(b"mfhd", &[0; 8]), bx(b"traf", &traf)].concat();
        [
            bx(b"styp", b"iso6"),
            bx(b"moof", &moof),
            bx(b"mdat", &[9; 20]),
        ]
        .concat()
    }

    #[test]
    fn rebases_the_decode_time_and_nothing_else() {
        let mut f = fragment(90_000 * 100);
        let before = f.clone();
        assert_eq!(first_decode_time(&f).unwrap(), 9_000_000);
        rebase_decode_time(&mut f, 90_000 * 99).unwrap();
        assert_eq!(first_decode_time(&f).unwrap(), 90_000);
        let diff = f.iter().zip(&before).filter(|(a, b)| a != b).count();
        assert!(diff <= 8, "only tfdt bytes may change");
    }

    #[test]
    fn version_0_and_malformed_boxes() {
        let traf = bx(b"traf", &bx(b"tfdt", &[0, 0, 0, 0, 0, 0, 1, 0]));
        let mut f = bx(b"moof", &traf);
        assert_eq!(first_decode_time(&f).unwrap(), 256);
        rebase_decode_time(&mut f, 56).unwrap();
        assert_eq!(first_decode_time(&f).unwrap(), 200);
        let before = f.clone();
        assert!(rebase_decode_time(&mut f, 500).is_err());
        assert_eq!(f, before, "a failed rebase changes nothing");
        assert!(first_decode_time(&bx(b"mdat", &[1, 2])).is_err());
        let mut cut = fragment(5);
        cut.truncate(30);
        assert!(first_decode_time(&cut).is_err());
        assert!(first_decode_time(&[0, 0, 0, 200, b'm', b'o', b'o', b'f']).is_err());
    }

    /// Decrypted fragments come from files; a malformed one must give an error, never a panic.
    #[test]
    fn random_and_mutated_boxes_give_errors_not_panics() {
        let mut next = crate::testing::rng(0x2545_f491_4f6c_dd1d);
        let valid = [fragment(90_000), fragment(180_000)].concat();
        for _ in 0..20_000 {
            let mut f = valid.clone();
            for _ in 0..1 + next() % 4 {
                let pos = (next() as usize) % f.len();
                f[pos] = next() as u8;
            }
            f.truncate((next() as usize) % (f.len() + 1));
            let _ = first_decode_time(&f);
            let _ = rebase_decode_time(&mut f, next() % 100_000);
        }
    }
}
