//! `strata`: the command-line front end of every Strata layer.
//!
//! Each subcommand is a thin wrapper: parse arguments, load `strata.toml`,
//! call the layer's library, print the outcome. Exit codes: 0 success,
//! 1 the input (config, contracts, arguments) is invalid, 2 a runtime failure.

mod cli;
mod demo;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    cli::init_tracing(&args);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(cli::run(args))
}
