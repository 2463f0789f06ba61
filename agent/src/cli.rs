//! Command-line arguments. Hand-parsed: three flags do not justify an
//! argument-parser dependency in a binary that ships in every OS image.

use crate::config::DEFAULT_CONFIG_PATH;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Run,
    SelfTest,
    Version,
    Help,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub mode: Mode,
    pub config: PathBuf,
}

pub const USAGE: &str = "\
usage: harmony-agent [--config PATH] [--self-test | --version | --help]

  --config PATH   agent configuration (default /etc/harmony/agent.toml)
  --self-test     check config, identity, fleet keys and RAUC on D-Bus, then exit:
                  0 all good, 10 config, 11 identity, 12 fleet keys, 13 RAUC/D-Bus
  --version       print the agent version
";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("--config needs a path")]
    MissingConfigPath,
    #[error("unknown argument {0:?}")]
    Unknown(String),
}

impl Args {
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, ArgsError> {
        let mut parsed = Self { mode: Mode::Run, config: PathBuf::from(DEFAULT_CONFIG_PATH) };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--config" | "-c" => {
                    parsed.config = args.next().map(PathBuf::from).ok_or(ArgsError::MissingConfigPath)?
                }
                "--self-test" => parsed.mode = Mode::SelfTest,
                "--version" | "-V" => parsed.mode = Mode::Version,
                "--help" | "-h" => parsed.mode = Mode::Help,
                other => match other.strip_prefix("--config=") {
                    Some(path) => parsed.config = PathBuf::from(path),
                    None => return Err(ArgsError::Unknown(other.to_string())),
                },
            }
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str]) -> Result<Args, ArgsError> {
        Args::parse(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn flags() {
        assert_eq!(parse(&[]).unwrap(), Args { mode: Mode::Run, config: PathBuf::from(DEFAULT_CONFIG_PATH) });
        assert_eq!(parse(&["--config", "/x.toml", "--self-test"]).unwrap().config, PathBuf::from("/x.toml"));
        assert_eq!(parse(&["--config=/y.toml"]).unwrap().config, PathBuf::from("/y.toml"));
        assert_eq!(parse(&["--self-test"]).unwrap().mode, Mode::SelfTest);
        assert_eq!(parse(&["--version"]).unwrap().mode, Mode::Version);
        assert_eq!(parse(&["--config"]), Err(ArgsError::MissingConfigPath));
        assert_eq!(parse(&["--frobnicate"]), Err(ArgsError::Unknown("--frobnicate".into())));
    }
}
