//! `remora`: parse arguments and hand over to the library.

use clap::Parser;

fn main() -> miette::Result<()> {
    let cli = remora_cli::args::Cli::parse();
    let code = remora_cli::run(cli)?;
    std::process::exit(code);
}
