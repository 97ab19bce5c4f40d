//! The `align` command-line program. With no arguments it runs the default job.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "align", version, about = "ALIGN dual-encoder training and search, in pure Rust")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Tour of the tensor engine and checkpoint I/O (the default until the trainer lands).
    Demo {
        /// Directory for the demo checkpoint.
        #[arg(long, default_value = "runs/demo")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Demo { out: PathBuf::from("runs/demo") }) {
        Command::Demo { out } => align::demo::run(&out).map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
