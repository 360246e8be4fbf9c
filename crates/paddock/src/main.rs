//! The `ros` multi-call binary. All logic lives in the `paddock` library; this file only
//! hands the raw arguments to the CLI layer and turns its error into an exit status.

fn main() -> std::process::ExitCode {
    paddock::cli::main(std::env::args_os().collect())
}
