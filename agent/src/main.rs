//! Entry point: parse arguments, load config, start logging, run.

use harmony_agent::cli::{Args, Mode, USAGE};
use harmony_agent::{logging, self_test, AgentConfig, Effects};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("harmony-agent: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match args.mode {
        Mode::Version => {
            println!("harmony-agent {}", harmony_agent::shared::AGENT_VERSION);
            return ExitCode::SUCCESS;
        }
        Mode::Help => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Mode::Run | Mode::SelfTest => {}
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("harmony-agent: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    if args.mode == Mode::SelfTest {
        return match runtime.block_on(self_test::run(&args.config)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(failure) => ExitCode::from(failure as u8),
        };
    }
    logging::init();
    let cfg = match AgentConfig::load(&args.config) {
        Ok(cfg) => cfg,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(10);
        }
    };
    match runtime.block_on(harmony_agent::run(cfg, Effects::real(), shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    }
}

/// SIGTERM (systemd stop) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            log::warn!("cannot listen for SIGTERM ({e}); stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
