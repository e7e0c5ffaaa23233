use clap::Parser;
use latchkey::cli::{Cli, run};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Optional env files; real environment variables win.
    for file in [".env", "app.env"] {
        let _ = dotenvy::from_filename(file);
    }
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("latchkey: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
