//! The `tokengate` command: parse the command line and delegate to the library.

use clap::Parser;

/// mimalloc: allocation-heavy request handling runs measurably faster on it
/// than on glibc's malloc (see benches/load.sh and the README).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tokengate::main(tokengate::Cli::parse())
}
