//! Logging: to the journal (with structured fields) when systemd gave us a
//! journal stream, plain stderr otherwise. `log` is the facade everywhere.

use log::{LevelFilter, Log, Metadata, Record};
use std::io::Write;

/// Level from `HARMONY_LOG` (error|warn|info|debug|trace), default info.
fn level_from_env() -> LevelFilter {
    std::env::var("HARMONY_LOG").ok().and_then(|v| v.parse().ok()).unwrap_or(LevelFilter::Info)
}

pub fn init() {
    let level = level_from_env();
    // systemd sets JOURNAL_STREAM when stdout/stderr go to the journal.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journal) = systemd_journal_logger::JournalLog::new() {
            if journal.with_syslog_identifier("harmony-agent".to_string()).install().is_ok() {
                log::set_max_level(level);
                return;
            }
        }
    }
    if log::set_boxed_logger(Box::new(StderrLog)).is_ok() {
        log::set_max_level(level);
    }
}

#[derive(Debug)]
struct StderrLog;

impl Log for StderrLog {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &Record<'_>) {
        let _ = writeln!(std::io::stderr().lock(), "{:<5} {}: {}", record.level(), record.target(), record.args());
    }
    fn flush(&self) {}
}
