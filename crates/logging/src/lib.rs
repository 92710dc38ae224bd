//! Process plumbing shared by the Neoflix programs: logging to the journal (with key-value fields
//! as journal fields) under systemd, to stderr as `LEVEL message key=value ...` otherwise; and the
//! shutdown signal the daemons wait for; and [`read_small_file`], the one way the programs read a
//! local file named by an operator (a config, a key), bounded so a wrong path cannot hang or
//! exhaust them.
#![deny(missing_docs)]

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Stderr;

struct Fields(String);

impl<'kvs> log::kv::VisitSource<'kvs> for Fields {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        self.0
            .push_str(&format!(" {key}={}", field_value(&value.to_string())));
        Ok(())
    }
}

impl Log for Stderr {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }

    fn log(&self, record: &Record) {
        let mut fields = Fields(String::new());
        let _ = record.key_values().visit(&mut fields);
        let level = match record.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        eprintln!(
            "{level} {}{}",
            escape_controls(&record.args().to_string()),
            fields.0
        );
    }

    fn flush(&self) {}
}

/// A field value as one token: quoted and escaped when it could be read as more than one
/// (spaces, quotes, `=`) or hides control characters. Values often come from outside (a
/// certificate's CN, an MQTT topic, a file name): a newline in one must not forge a log line.
fn field_value(v: &str) -> std::borrow::Cow<'_, str> {
    if v.is_empty()
        || v.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '=')
    {
        format!("{v:?}").into()
    } else {
        v.into()
    }
}

/// The message with control characters escaped (`\n`, `\u{1b}`), so text from outside that ends
/// up in a message (an error from a peer, a path) cannot start a line of its own or drive the
/// terminal.
pub fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect::<String>()
            .into()
    } else {
        s.into()
    }
}

/// Hands records to the journal with control characters in the message escaped; fields go as
/// journal fields, which hold any bytes without ambiguity.
struct Escaping<L>(L);

impl<L: Log> Log for Escaping<L> {
    fn enabled(&self, m: &Metadata) -> bool {
        self.0.enabled(m)
    }

    fn log(&self, record: &Record) {
        let message = record.args().to_string();
        match escape_controls(&message) {
            std::borrow::Cow::Borrowed(_) => self.0.log(record),
            std::borrow::Cow::Owned(escaped) => self.0.log(
                &Record::builder()
                    .args(format_args!("{escaped}"))
                    .metadata(record.metadata().clone())
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .key_values(record.key_values())
                    .build(),
            ),
        }
    }

    fn flush(&self) {
        self.0.flush()
    }
}

/// Installs the logger: the journal when stderr is connected to it, stderr otherwise. The level
/// comes from `NEOFLIX_LOG` (`error`, `warn`, `info`, `debug`), default `info`.
pub fn init(program: &str) {
    let level = std::env::var("NEOFLIX_LOG")
        .ok()
        .and_then(|l| l.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::Info);
    let journal = systemd_journal_logger::connected_to_journal()
        .then(|| systemd_journal_logger::JournalLog::new().ok())
        .flatten();
    let installed = match journal {
        Some(j) => log::set_boxed_logger(Box::new(Escaping(
            j.with_syslog_identifier(program.to_string()),
        ))),
        None => log::set_boxed_logger(Box::new(Stderr)),
    };
    if installed.is_ok() {
        log::set_max_level(level);
    }
}

/// Why a small local file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SmallFileError {
    /// Opening or reading failed: typically a wrong path or missing permissions.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The path.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not a regular file, too large, or not text: typically a wrong path (a device, a FIFO) or
    /// the wrong file.
    #[error("cannot read {}: {why}", path.display())]
    Refused {
        /// The path.
        path: std::path::PathBuf,
        /// What it is instead.
        why: String,
    },
}

/// Reads a small local text file whole, refusing what is not a regular file or is larger than
/// `limit` bytes before reading it; a FIFO does not block the caller.
pub fn read_small_file(path: &std::path::Path, limit: u64) -> Result<String, SmallFileError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let read_err = |source| SmallFileError::Read {
        path: path.to_owned(),
        source,
    };
    let refuse = |why: String| SmallFileError::Refused {
        path: path.to_owned(),
        why,
    };
    // Non-blocking, or opening a FIFO waits for a writer that may never come.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(refuse(
            "not a regular file (a device, FIFO or directory): give the path of the file itself"
                .into(),
        ));
    }
    let too_large = || refuse(format!("larger than {}: not the file meant", size(limit)));
    if meta.len() > limit {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    // The size can change after the check; the cap holds regardless.
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|e| {
        refuse(format!(
            "not UTF-8 text (invalid byte at offset {}): save it as UTF-8",
            e.utf8_error().valid_up_to()
        ))
    })
}

fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

/// Completes on SIGTERM (systemd's stop) or SIGINT (Ctrl-C). If the handlers cannot be installed
/// it says so and never completes: the process then stops only by SIGKILL.
///
/// The handlers are installed by this call, not when the future is first polled: a daemon
/// awaits its shutdown only once it is running, and a stop that arrives while it is still
/// starting (systemd sends it whenever it likes) must wait for it there, not kill the process
/// by the signal's default action. Call it inside the runtime, first thing.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    // tokio's `signal` panics outside a runtime; this says so instead.
    let handlers = tokio::runtime::Handle::try_current()
        .map_err(std::io::Error::other)
        .and_then(|_| signal(SignalKind::terminate()))
        .and_then(|term| Ok((term, signal(SignalKind::interrupt())?)));
    async move {
        let (mut term, mut int) = match handlers {
            Ok(h) => h,
            Err(e) => {
                log::error!(error = e.to_string().as_str(); "cannot install signal handlers; stop with SIGKILL only");
                return std::future::pending().await;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_runtime_the_stop_handlers_are_refused_not_a_panic() {
        drop(shutdown_signal());
    }

    #[test]
    fn small_files_only() {
        let dir = std::env::temp_dir().join(format!("neoflix-small-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = dir.join("ok.toml");
        std::fs::write(&ok, "a = 1\n").unwrap();
        assert_eq!(read_small_file(&ok, 1024).unwrap(), "a = 1\n");
        let big = dir.join("big");
        std::fs::write(&big, vec![b'#'; 2048]).unwrap();
        let e = read_small_file(&big, 1024).unwrap_err().to_string();
        assert!(e.contains("larger than 1 KiB"), "{e}");
        let e = read_small_file(std::path::Path::new("/dev/zero"), 1024)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = read_small_file(&dir, 1024).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let bin = dir.join("bin");
        std::fs::write(&bin, b"a = \xff").unwrap();
        let e = read_small_file(&bin, 1024).unwrap_err().to_string();
        assert!(
            e.contains("not UTF-8 text (invalid byte at offset 4)"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn outside_text_cannot_forge_a_line() {
        assert_eq!(field_value("room-1"), "room-1");
        assert_eq!(field_value(""), "\"\"");
        assert_eq!(
            field_value("evil\nINFO forged peer=admin"),
            "\"evil\\nINFO forged peer=admin\""
        );
        assert_eq!(field_value("a=b"), "\"a=b\"");
        assert_eq!(field_value("tab\there"), "\"tab\\there\"");
        assert_eq!(escape_controls("plain"), "plain");
        assert_eq!(
            escape_controls("bad\nINFO forged\u{1b}[2J"),
            "bad\\nINFO forged\\u{1b}[2J"
        );
    }
}
