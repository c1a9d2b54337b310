//! `causeway`: the industrial edge gateway. A thin command line over the `gateway` library.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
