//! `otterctl`: parses the command line, runs it on a single-threaded tokio runtime and prints one error line.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = otterctl::Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "otterctl: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(otterctl::run(cli)) {
        Ok(code) => code,
        // The reader of our output went away (`otterctl history | head`): it has what it wanted.
        Err(e) if otterctl::is_closed_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "otterctl: {e:#}");
            ExitCode::from(otterctl::EXIT_FAILED)
        }
    }
}
