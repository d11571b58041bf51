//! `ringkv`: one binary for the servers, the local playground and the
//! benchmark. Each subcommand lives in its own file under `cmd/`.

mod cmd;
mod output;

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let cli = cmd::Cli::parse();
    if !cli.command.is_server() {
        // A client command piped into `head` ends quietly when the pipe
        // closes, as Unix tools do, instead of panicking on the write.
        // (Servers keep Rust's ignored SIGPIPE: a peer that hangs up must
        // not kill them.)
        // SAFETY: signal(2) with SIG_DFL has no memory-safety conditions;
        // nothing in this process writes to a pipe or socket yet.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // Servers log their life; client commands only what goes wrong.
    let default = if cli.command.is_server() { "info,raft=warn" } else { "warn" };
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| default.into());
    let log = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.command.log_format() {
        cmd::LogFormat::Text => log.init(),
        // Event fields (request_id, hops, ...) at the top level of each
        // line, the spans they ran in under `span` / `spans`.
        cmd::LogFormat::Json => log.json().flatten_event(true).init(),
    }
    if let Err(e) = cmd::run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
