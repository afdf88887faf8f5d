//! `strata`: the command-line front end of every Strata layer.
//!
//! Each subcommand is a thin wrapper: parse arguments, load `strata.toml`,
//! call the layer's library, print the outcome. Exit codes: 0 success,
//! 1 the input (config, contracts, arguments) is invalid, 2 a runtime failure.

mod cli;
mod demo;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc, not glibc's malloc: with glibc, a batch worker's resident
/// memory grew with every chunk it ran (up to 8 arenas per core keep the
/// memory Polars and the tokio blocking threads freed; a 1-day run peaked at
/// 951 MiB, 7 days at 1,516 MiB), though each chunk holds the same. The
/// split-run bench (`scripts/bench-batch-split.sh`) uses the same allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
