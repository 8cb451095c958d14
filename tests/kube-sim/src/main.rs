//! `remora-kube-sim`: parses arguments and hands over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = remora_kube_sim::Cli::parse();
    match remora_kube_sim::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("remora-kube-sim: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
