//! The `shoal` command-line client.

use clap::Parser;

/// mimalloc in its secure mode (guard pages, encoded free lists, randomised allocation):
/// glibc's allocator spent a fifth of the managers' CPU in contended arena locks and
/// consolidation under write load (`shoal-bench raft`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
