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
        let v = value.to_string();
        if v.contains(' ') || v.is_empty() {
            self.0.push_str(&format!(" {key}={v:?}"));
        } else {
            self.0.push_str(&format!(" {key}={v}"));
        }
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
        eprintln!("{level} {}{}", record.args(), fields.0);
    }

    fn flush(&self) {}
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
        Some(j) => j.with_syslog_identifier(program.to_string()).install(),
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
