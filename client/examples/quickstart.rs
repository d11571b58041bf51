//! Writes, reads, compare-and-swaps and scans through a running router.
//!
//!     ringkv playground            # in one terminal
//!     cargo run -p ringkv-client --example quickstart -- 127.0.0.1:6380

use ringkv_client::Client;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let routers: Vec<String> = std::env::args().skip(1).collect();
    let routers = if routers.is_empty() { vec!["127.0.0.1:6380".to_string()] } else { routers };
    let client = Client::connect(&routers).await?;

    client.put(b"user:{42}:name", b"Ada").await?;
    println!("name = {:?}", client.get(b"user:{42}:name").await?.map(String::from_utf8));

    let swapped = client.cas(b"user:{42}:name", Some(b"Ada"), Some(b"Ada Lovelace")).await?;
    println!("cas succeeded: {}", swapped.succeeded);

    client.put(b"user:{42}:email", b"ada@example.org").await?;
    let page = client.scan(b"user:{42}:", 100, b"").await?;
    for p in page.pairs {
        println!("{} = {}", String::from_utf8_lossy(&p.key), String::from_utf8_lossy(&p.value));
    }
    Ok(())
}
