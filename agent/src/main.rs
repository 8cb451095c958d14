//! `remora-agent`: parses its arguments and runs the agent library.

use clap::Parser;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args = remora_agent::Args::parse();
    remora_agent::init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("remora-agent")
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("remora-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(remora_agent::run(args));
    // A blocking job stuck on a client's behalf must not keep the agent alive.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("remora-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
