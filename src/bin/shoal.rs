//! The `shoal` command-line client.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shoal_pki::install_crypto_provider();
    let cli = shoal::cli::Cli::parse();
    match shoal::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
