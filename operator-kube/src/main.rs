//! `remora-operator`: parses its arguments and runs the operator: the local
//! platform from `remora-operator`'s library, the Kubernetes mode from this
//! crate's (the operator library cannot link the Kubernetes platform, which
//! depends on it).

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = remora_operator::Args::parse();
    remora_operator::init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("remora-operator")
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("remora-operator: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(remora_operator_kube::serve::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("remora-operator: {e}");
            ExitCode::FAILURE
        }
    }
}
