//! Just enough ISO BMFF to rebase a fragment's decode time: `moof` → `traf` → `tfdt`.
//!
//! A recording starts with pre-roll captured long after the pipeline started, so its first
//! fragment's decode time is far from zero; players then show a long blank lead-in or a wrong
//! duration. Rebasing every fragment by the first one's decode time makes the file start at 0.

/// A malformed fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mp4Error(pub &'static str);

impl std::fmt::Display for Mp4Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed MP4 fragment: {}", self.0)
    }
}

/// Iterates over the boxes in `data`: (type, start of box, start of payload, end of box).
fn boxes(
    data: &[u8],
) -> impl Iterator<Item = Result<([u8; 4], usize, usize, usize), Mp4Error>> + '_ {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        if pos >= data.len() {
            return None;
        }
        if data.len() - pos < 8 {
            pos = data.len();
            return Some(Err(Mp4Error("box header cut short")));
        }
        let size32 = u32::from_be_bytes(data[pos..pos + 4].try_into().expect("4 bytes")) as u64;
        let mut kind = [0u8; 4];
        kind.copy_from_slice(&data[pos + 4..pos + 8]);
        let (size, header) = match size32 {
            0 => ((data.len() - pos) as u64, 8),
            1 => {
                if data.len() - pos < 16 {
                    pos = data.len();
                    return Some(Err(Mp4Error("large box header cut short")));
                }
                (
                    u64::from_be_bytes(data[pos + 8..pos + 16].try_into().expect("8 bytes")),
                    16,
                )
            }
            s => (s, 8),
        };
        // The size is outside data: it must fit what is left before it moves the cursor.
        let end = usize::try_from(size)
            .ok()
            .filter(|&size| size >= header && size <= data.len() - pos)
            .and_then(|size| pos.checked_add(size));
        let Some(end) = end else {
            pos = data.len();
            return Some(Err(Mp4Error("box size exceeds its container")));
        };
        let start = pos;
        pos = end;
        Some(Ok((kind, start, start + header, end)))
    })
}

/// Finds every `tfdt` box (payload ranges) under `moof/traf`.
fn tfdts(data: &[u8]) -> Result<Vec<(usize, usize)>, Mp4Error> {
    let mut found = Vec::new();
    for b in boxes(data) {
        let (kind, _, body, end) = b?;
        if &kind != b"moof" {
            continue;
        }
        for t in boxes(&data[body..end]) {
            let (kind, _, tbody, tend) = t?;
            if &kind != b"traf" {
                continue;
            }
            let (tbody, tend) = (body + tbody, body + tend);
            for d in boxes(&data[tbody..tend]) {
                let (kind, _, dbody, dend) = d?;
                if &kind == b"tfdt" {
                    found.push((tbody + dbody, tbody + dend));
                }
            }
        }
    }
    if found.is_empty() {
        return Err(Mp4Error("no moof/traf/tfdt box"));
    }
    Ok(found)
}

fn read_tfdt(data: &[u8], (body, end): (usize, usize)) -> Result<u64, Mp4Error> {
    let p = &data[body..end];
    match p.first() {
        Some(1) if p.len() >= 12 => Ok(u64::from_be_bytes(p[4..12].try_into().expect("8 bytes"))),
        Some(0) if p.len() >= 8 => {
            Ok(u32::from_be_bytes(p[4..8].try_into().expect("4 bytes")) as u64)
        }
        _ => Err(Mp4Error("tfdt box of unknown version or cut short")),
    }
}

/// The decode time of the first track fragment.
pub fn first_decode_time(fragment: &[u8]) -> Result<u64, Mp4Error> {
    let t = tfdts(fragment)?;
    read_tfdt(fragment, t[0])
}

/// Subtracts `base` from every track fragment's decode time, in place.
pub fn rebase_decode_time(fragment: &mut [u8], base: u64) -> Result<(), Mp4Error> {
    for r in tfdts(fragment)? {
        let t = read_tfdt(fragment, r)?;
        let new = t
            .checked_sub(base)
            .ok_or(Mp4Error("decode time before the first fragment's"))?;
        let p = &mut fragment[r.0..r.1];
        if p[0] == 1 {
            p[4..12].copy_from_slice(&new.to_be_bytes());
        } else {
            p[4..8].copy_from_slice(&(new as u32).to_be_bytes());
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An ISO BMFF box: size, type, body. Shared with the export tests.
    pub(crate) fn bx(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(kind);
        v.extend_from_slice(body);
        v
    }

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
        assert!(rebase_decode_time(&mut f, 500).is_err());
        assert!(first_decode_time(&bx(b"mdat", &[1, 2])).is_err());
        let mut cut = fragment(5);
        cut.truncate(30);
        assert!(first_decode_time(&cut).is_err());
        assert!(first_decode_time(&[0, 0, 0, 200, b'm', b'o', b'o', b'f']).is_err());
    }
}

#[cfg(test)]
mod robustness {
    use super::*;

    /// Decrypted fragments come from files; a malformed one must give an error, never a panic.
    #[test]
    fn random_and_mutated_boxes_give_errors_not_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut tfdt = vec![1, 0, 0, 0];
        tfdt.extend_from_slice(&90_000u64.to_be_bytes());
        let mk = |k: &[u8; 4], b: &[u8]| {
            let mut v = ((b.len() + 8) as u32).to_be_bytes().to_vec();
            v.extend_from_slice(k);
            v.extend_from_slice(b);
            v
        };
        let valid = [
            mk(b"moof", &mk(b"traf", &mk(b"tfdt", &tfdt))),
            mk(b"mdat", &[1; 16]),
        ]
        .concat();
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
