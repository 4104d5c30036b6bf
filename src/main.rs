//! The `tokengate` command: parse the command line and delegate to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    tokengate::cli::main(tokengate::cli::Cli::parse())
}
