//! The `remora` command line: `run`/`exec`, `ext` (IDE debuggers), `test`,
//! `ci start|stop`, `ls`, `ide intellij`, `session`, `operator manifests`,
//! `config`, `completions`,
//! and the hidden `intproxy` (started by every session) and `runner` (test
//! binaries of `remora test`) subcommands. [`session::prepare`] is the one
//! place a session is set up.

pub mod args;
pub mod ci_cmd;
pub mod config_cmd;
pub mod db_cmd;
pub mod doctor;
pub mod elf;
pub mod error;
pub mod ext;
pub mod ide;
pub mod interception;
pub mod intproxy_cmd;
pub mod kube;
pub mod kube_operator;
pub mod local;
pub mod ls_cmd;
pub mod operator_cmd;
pub mod procfs;
pub mod progress;
pub mod queues_cmd;
pub mod run;
pub mod session;
pub mod session_cmd;
pub mod session_kube;
pub mod state;
pub mod test_cmd;

use args::{Cli, Command};

/// Run a parsed command line; returns the process exit code (for commands
/// that do not exec).
pub fn run(cli: Cli) -> miette::Result<i32> {
    match cli.command {
        Command::Run(args) => run::run(*args).map_err(Into::into),
        Command::Intproxy(args) => intproxy_cmd::run(args).map_err(Into::into),
        Command::Config(cmd) => config_cmd::run(cmd),
        Command::Session(cmd) => session_cmd::run(cmd).map_err(Into::into),
        Command::Db(cmd) => db_cmd::run(cmd).map_err(Into::into),
        Command::Queues(cmd) => queues_cmd::run(cmd).map_err(Into::into),
        Command::Operator(cmd) => Ok(operator_cmd::run(cmd)),
        Command::Ext(args) => ext::run(*args).map_err(Into::into),
        Command::Test(args) => test_cmd::run(*args).map_err(Into::into),
        Command::Runner(args) => test_cmd::runner(args).map_err(Into::into),
        Command::Supervise(args) => run::supervise_cmd(args).map_err(Into::into),
        Command::Ci(cmd) => ci_cmd::run(cmd).map_err(Into::into),
        Command::Ls(args) => ls_cmd::run(args).map_err(Into::into),
        Command::Ide(cmd) => ide::run(cmd).map_err(Into::into),
        Command::Doctor(args) => Ok(doctor::run(args)),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "remora", &mut std::io::stdout());
            Ok(0)
        }
    }
}
