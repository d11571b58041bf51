//! `ringkv`: one binary for the servers, the local playground and the
//! benchmark. Each subcommand lives in its own file under `cmd/`.

mod cmd;
mod output;

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = cmd::Cli::parse();
    // Servers log their life; client commands only what goes wrong.
    let default = if cli.command.is_server() { "info,raft=warn" } else { "warn" };
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| default.into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    if let Err(e) = cmd::run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
