//! The `tagsweep` binary: everything lives in the library; see `cli`.

use clap::Parser;

#[tokio::main]
async fn main() {
    let code = tagsweep::cli::run(tagsweep::cli::Cli::parse()).await;
    std::process::exit(code);
}
