//! Process plumbing shared by the Neoflix programs: logging to the journal (with key-value fields
//! as journal fields) under systemd, to stderr as `LEVEL message key=value ...` otherwise; and the
//! shutdown signal the daemons wait for.
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

/// Completes on SIGTERM (systemd's stop) or SIGINT (Ctrl-C). If the handlers cannot be installed
/// it says so and never completes: the process then stops only by SIGKILL.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        log::error!("cannot install signal handlers; stop with SIGKILL only");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
