//! Subcommand dispatch.

pub mod bench;
pub mod placement;
pub mod playground;
pub mod router;
pub mod storenode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ringkv", version, about = "ringkv: a sharded, linearizable key-value store")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a member of the placement service.
    Placement(placement::Args),
    /// Run a storenode server.
    Storenode(storenode::Args),
    /// Run a router: the gRPC Kv API and the HTTP gateway.
    Router(router::Args),
    /// Start a local cluster on 127.0.0.1 and keep it running until Ctrl-C.
    Playground(playground::Args),
    /// Measure puts/s, gets/s and latency against a local 3-storenode cluster.
    Bench(bench::Args),
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Placement(a) => placement::run(a).await,
        Command::Storenode(a) => storenode::run(a).await,
        Command::Router(a) => router::run(a).await,
        Command::Playground(a) => playground::run(a).await,
        Command::Bench(a) => bench::run(a).await,
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
