//! A minimal `log` backend for the CLI: stderr, level from `HARMONY_LOG`
//! (error|warn|info|debug|trace, default info).

use log::{Level, LevelFilter, Log, Metadata, Record};

#[derive(Debug)]
struct StderrLogger;

static LOGGER: StderrLogger = StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= log::max_level() && (m.target().starts_with("harmony") || m.level() <= Level::Warn)
    }
    fn log(&self, r: &Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("{:<5} {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

pub fn init() {
    let level = match std::env::var("HARMONY_LOG").unwrap_or_default().as_str() {
        "error" => LevelFilter::Error,
        "warn" => LevelFilter::Warn,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        "off" => LevelFilter::Off,
        _ => LevelFilter::Info,
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
