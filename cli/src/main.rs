//! `ringkv`: one binary for the servers, the local playground and the
//! benchmark. Each subcommand lives in its own file under `cmd/`.

mod cmd;

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = cmd::Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info,raft=warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    if let Err(e) = cmd::run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
