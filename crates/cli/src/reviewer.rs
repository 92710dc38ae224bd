//! `neoflix reviewer enrol`: where the department key lives, make a reviewer file that lets one
//! person open recordings in the review page with their passphrase (`docs/review.md`, "Keys").

use std::fs;
use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, bail};
use neoflix_format::reviewer::{Kdf, ReviewerFile, ReviewerName, Role, SALT_LEN};
use neoflix_open::DepartmentSecretKey;
use zeroize::Zeroizing;

/// Largest passphrase file read: a passphrase is a line.
const MAX_PASSPHRASE_FILE: u64 = 4096;

/// Makes `name`'s reviewer file for `dept` with `passphrase` and writes it to `out` (mode 0600,
/// never over an existing file). `now` is the enrolment time, RFC 3339.
pub fn enrol(
    name: &str,
    dept: &DepartmentSecretKey,
    passphrase: &str,
    roles: &[Role],
    out: &Path,
    now: &str,
) -> anyhow::Result<ReviewerFile> {
    let name = ReviewerName::parse(name)?;
    let mut salt = [0u8; SALT_LEN];
    getrandom::fill(&mut salt).context("no randomness available for the salt")?;
    let file = neoflix_open::reviewer::enrol(
        &name,
        dept,
        passphrase,
        Kdf::recommended(&salt),
        roles,
        now,
    )?;
    let mut text = serde_json::to_vec_pretty(&file)?;
    text.push(b'\n');
    // The file allows offline guessing of the passphrase: the owner's only, and never replacing
    // another reviewer's file by a slip of the `-o`.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| {
            format!(
                "cannot create {} (an existing file is never replaced: remove it first)",
                out.display()
            )
        })?;
    f.write_all(&text)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(file)
}

/// The passphrase in the first line of `path` (a regular file of at most 4 KiB; the line end is
/// not part of it).
pub fn passphrase_from_file(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot read passphrase file {}", path.display()))?;
    let meta = f.metadata()?;
    if !meta.is_file() || meta.len() > MAX_PASSPHRASE_FILE {
        bail!(
            "passphrase file {} is not a regular file of one line (at most {MAX_PASSPHRASE_FILE} bytes)",
            path.display()
        );
    }
    let mut line = Zeroizing::new(String::new());
    std::io::BufReader::new(std::io::Read::take(f, MAX_PASSPHRASE_FILE))
        .read_line(&mut line)
        .with_context(|| format!("passphrase file {} is not UTF-8 text", path.display()))?;
    let trimmed = line.trim_end_matches(['\n', '\r']);
    Ok(Zeroizing::new(trimmed.to_owned()))
}

/// Asks for the passphrase twice on the terminal, without echo.
pub fn passphrase_from_terminal(name: &str) -> anyhow::Result<Zeroizing<String>> {
    let first = read_hidden(&format!("Passphrase for reviewer {name}: "))?;
    let second = read_hidden("Repeat it: ")?;
    if *first != *second {
        bail!("the two passphrases differ; nothing was written");
    }
    Ok(first)
}

/// One line from `/dev/tty` with echo off, restored whatever happens.
fn read_hidden(prompt: &str) -> anyhow::Result<Zeroizing<String>> {
    use std::os::fd::AsRawFd;
    let tty = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("no terminal to ask for the passphrase on: give --passphrase-file")?;
    let fd = tty.as_raw_fd();
    // SAFETY: termios is plain data; tcgetattr fills it for a valid descriptor we hold open.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
        bail!("/dev/tty is not a terminal: give --passphrase-file");
    }
    let mut quiet = saved;
    quiet.c_lflag &= !libc::ECHO;
    quiet.c_lflag |= libc::ECHONL;
    // SAFETY: as above; the settings are restored below on every path.
    unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &quiet) };
    let result = (|| {
        (&tty).write_all(prompt.as_bytes())?;
        let mut line = Zeroizing::new(String::new());
        std::io::BufReader::new(&tty).read_line(&mut line)?;
        Ok::<_, std::io::Error>(line)
    })();
    // SAFETY: restores what tcgetattr returned.
    unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &saved) };
    let line = result.context("cannot read the passphrase from the terminal")?;
    Ok(Zeroizing::new(
        line.trim_end_matches(['\n', '\r']).to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn enrol_writes_a_private_file_the_server_can_parse_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let dept = DepartmentSecretKey::generate().unwrap();
        let out = dir.path().join("alice.reviewer");
        let pass = dir.path().join("pass");
        fs::write(&pass, "a long enough passphrase\n").unwrap();
        let p = passphrase_from_file(&pass).unwrap();
        assert_eq!(p.as_str(), "a long enough passphrase");
        let made = enrol(
            "alice",
            &dept,
            &p,
            &[Role::Reviewer],
            &out,
            "2026-11-28T10:00:00.000Z",
        )
        .unwrap();
        let mode = fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let parsed = ReviewerFile::parse(&fs::read(&out).unwrap()).unwrap();
        assert_eq!(parsed, made);
        assert_eq!(parsed.department_key_id, dept.public_key().key_id().0);
        let again = enrol(
            "alice",
            &dept,
            &p,
            &[Role::Reviewer],
            &out,
            "2026-11-28T10:00:00.000Z",
        )
        .unwrap_err();
        assert!(format!("{again:#}").contains("never replaced"), "{again:#}");
        let bad = enrol(
            "../bob",
            &dept,
            &p,
            &[Role::Reviewer],
            &dir.path().join("b"),
            "2026-11-28T10:00:00.000Z",
        );
        assert!(format!("{:#}", bad.unwrap_err()).contains("name"));
        let officer = dir.path().join("olga.reviewer");
        let made = enrol(
            "olga",
            &dept,
            &p,
            &[Role::PrivacyOfficer],
            &officer,
            "2026-11-28T10:00:00.000Z",
        )
        .unwrap();
        assert_eq!(made.wrapped_key, None, "no video: no key");
        let text = fs::read_to_string(&officer).unwrap();
        assert!(text.contains("privacy-officer"), "{text}");
    }

    #[test]
    fn a_passphrase_file_that_is_not_a_small_regular_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        fs::write(&big, vec![b'a'; 5000]).unwrap();
        assert!(passphrase_from_file(&big).is_err());
        assert!(passphrase_from_file(dir.path()).is_err());
        assert!(passphrase_from_file(&dir.path().join("missing")).is_err());
    }
}
