//! Data commands through a router: `ringkv get|put|delete|cas|scan`.

use std::time::Duration;

use anyhow::{bail, Context};
use ringkv_client::{Client, ReadConsistency};
use serde::Serialize;

use crate::output::{print, text, Format};

/// Where and how to reach the cluster.
#[derive(clap::Args, Clone)]
pub struct Conn {
    /// Router gRPC addresses, comma-separated (failover in order).
    #[arg(long, env = "RINGKV_ROUTER", value_delimiter = ',', default_value = super::defaults::ROUTER_ADDR)]
    pub router: Vec<String>,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: Format,
}

impl Conn {
    async fn client(&self) -> anyhow::Result<Client> {
        for r in &self.router {
            ringkv_common::net::check_host_port(r).map_err(|e| anyhow::anyhow!("--router {r:?}: {e}"))?;
        }
        anyhow::ensure!(self.timeout_ms > 0, "--timeout-ms must be positive");
        Ok(Client::connect(&self.router).await?.with_timeout(Duration::from_millis(self.timeout_ms)))
    }
}

#[derive(clap::Args)]
pub struct Get {
    key: String,
    /// linearizable (default), follower or stale.
    #[arg(long, default_value = "linearizable")]
    consistency: String,
    #[command(flatten)]
    conn: Conn,
}

#[derive(clap::Args)]
pub struct Put {
    key: String,
    /// The value; "-" reads it from standard input (for large or binary values).
    value: String,
    #[command(flatten)]
    conn: Conn,
}

#[derive(clap::Args)]
pub struct Delete {
    key: String,
    #[command(flatten)]
    conn: Conn,
}

#[derive(clap::Args)]
pub struct Cas {
    key: String,
    /// The value to write when the condition holds.
    new: String,
    /// The value the key must hold now.
    #[arg(long, conflicts_with = "absent")]
    expect: Option<String>,
    /// The key must not exist now.
    #[arg(long)]
    absent: bool,
    #[command(flatten)]
    conn: Conn,
}

#[derive(clap::Args)]
pub struct Scan {
    /// Key prefix; with a complete hash tag ("user:{42}:") one shard is read
    /// in key order, otherwise every shard is scanned.
    #[arg(default_value = "")]
    prefix: String,
    /// At most this many keys (all pages).
    #[arg(long, default_value_t = 100)]
    limit: u32,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Serialize)]
struct KeyValue {
    key: String,
    found: bool,
    value: Option<String>,
}

pub async fn get(a: Get) -> anyhow::Result<()> {
    let consistency = match a.consistency.as_str() {
        "linearizable" => ReadConsistency::Linearizable,
        "follower" => ReadConsistency::Follower,
        "stale" => ReadConsistency::Stale,
        other => bail!("--consistency {other:?}: linearizable, follower or stale"),
    };
    let v = a.conn.client().await?.get_with(a.key.as_bytes(), consistency).await?;
    match (a.conn.output, v) {
        (Format::Table, Some(v)) => println!("{}", text(&v)),
        (Format::Table, None) => bail!("key {:?} not found", a.key),
        (Format::Json, v) => {
            let kv = KeyValue { key: a.key, found: v.is_some(), value: v.map(|v| text(&v)) };
            println!("{}", serde_json::to_string_pretty(&kv)?);
        }
    }
    Ok(())
}

pub async fn put(a: Put) -> anyhow::Result<()> {
    let value = if a.value == "-" {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut v).context("reading the value from stdin")?;
        v
    } else {
        a.value.into_bytes()
    };
    a.conn.client().await?.put(a.key.as_bytes(), &value).await?;
    report(a.conn.output, serde_json::json!({ "ok": true }), "OK")
}

pub async fn delete(a: Delete) -> anyhow::Result<()> {
    let existed = a.conn.client().await?.delete(a.key.as_bytes()).await?;
    report(a.conn.output, serde_json::json!({ "existed": existed }), if existed { "deleted" } else { "not found" })
}

pub async fn cas(a: Cas) -> anyhow::Result<()> {
    if a.expect.is_none() && !a.absent {
        bail!("say what the key must hold: --expect VALUE or --absent");
    }
    let r = a
        .conn
        .client()
        .await?
        .cas(a.key.as_bytes(), a.expect.as_deref().map(str::as_bytes), Some(a.new.as_bytes()))
        .await?;
    let json = serde_json::json!({
        "succeeded": r.succeeded,
        "found": r.found,
        "current_value": r.found.then(|| text(&r.current_value)),
    });
    if a.conn.output == Format::Json {
        return report(Format::Json, json, "");
    }
    if r.succeeded {
        println!("OK");
        Ok(())
    } else if r.found {
        bail!("compare failed: the key holds {:?}", text(&r.current_value))
    } else {
        bail!("compare failed: the key does not exist")
    }
}

pub async fn scan(a: Scan) -> anyhow::Result<()> {
    let client = a.conn.client().await?;
    let mut pairs = Vec::new();
    let mut continuation = Vec::new();
    let mut full_scan = false;
    while (pairs.len() as u32) < a.limit {
        let page = client.scan(a.prefix.as_bytes(), a.limit - pairs.len() as u32, &continuation).await?;
        full_scan = page.full_scan;
        pairs.extend(page.pairs);
        if page.continuation.is_empty() {
            break;
        }
        continuation = page.continuation;
    }
    if full_scan && a.conn.output == Format::Table {
        eprintln!("(a full scan of every shard: keys come in hash order)");
    }
    let kvs: Vec<KeyValue> =
        pairs.iter().map(|p| KeyValue { key: text(&p.key), found: true, value: Some(text(&p.value)) }).collect();
    let rows = kvs.iter().map(|kv| vec![kv.key.clone(), kv.value.clone().unwrap_or_default()]).collect();
    print(a.conn.output, &kvs, &["key", "value"], rows)
}

fn report(format: Format, json: serde_json::Value, line: &str) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&json)?),
        Format::Table => println!("{line}"),
    }
    Ok(())
}
