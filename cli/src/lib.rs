//! The `remora` command line: `run`/`exec`, `session`, `config`, `completions`, and the
//! hidden `intproxy` subcommand that `run` starts in the background.

pub mod args;
pub mod config_cmd;
pub mod elf;
pub mod error;
pub mod intproxy_cmd;
pub mod local;
pub mod progress;
pub mod run;
pub mod session_cmd;

use args::{Cli, Command};

/// Run a parsed command line; returns the process exit code (for commands
/// that do not exec).
pub fn run(cli: Cli) -> miette::Result<i32> {
    match cli.command {
        Command::Run(args) => run::run(*args).map_err(Into::into),
        Command::Intproxy(args) => intproxy_cmd::run(args).map_err(Into::into),
        Command::Config(cmd) => config_cmd::run(cmd),
        Command::Session(cmd) => session_cmd::run(cmd).map_err(Into::into),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "remora", &mut std::io::stdout());
            Ok(0)
        }
    }
}
