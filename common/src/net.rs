//! Outgoing gRPC connections for every ringkv process, made in one place.
//!
//! A process that listens on one specific address (say 127.0.0.12 inside a
//! test's network namespace, or one NIC of a VM) also sends from it: its
//! outgoing connections are bound to that address before connecting. Peers
//! then see the right source, so firewall rules that partition nodes by
//! address (the fault-injection suite's) cut exactly the traffic intended.

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

static LOCAL_IP: OnceLock<IpAddr> = OnceLock::new();

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends from `listen`'s address from now on, unless it is a wildcard
/// (0.0.0.0 / ::). The first call wins: a process has one identity.
pub fn set_source_from(listen: SocketAddr) {
    if !listen.ip().is_unspecified() {
        let _ = LOCAL_IP.set(listen.ip());
    }
}

/// The endpoint for a peer at `addr` (HOST:PORT or a URI).
pub fn endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    let uri = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    Ok(Endpoint::from_shared(uri)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5)))
}

/// Connects `ep`, from this process's address when one is set.
pub async fn connect_endpoint(ep: Endpoint) -> Result<Channel, tonic::transport::Error> {
    let Some(&local) = LOCAL_IP.get() else { return ep.connect().await };
    let connector = tower::service_fn(move |uri: Uri| async move {
        let host = uri.host().unwrap_or("127.0.0.1").trim_start_matches('[').trim_end_matches(']').to_string();
        let port = uri.port_u16().unwrap_or(80);
        let target = tokio::net::lookup_host((host.as_str(), port))
            .await?
            .find(|a| a.is_ipv4() == local.is_ipv4())
            .ok_or_else(|| std::io::Error::other(format!("no address for {host}")))?;
        let sock = if local.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        sock.bind(SocketAddr::new(local, 0))?;
        let stream = sock.connect(target).await?;
        stream.set_nodelay(true)?;
        Ok::<_, std::io::Error>(TokioIo::new(stream))
    });
    ep.connect_with_connector(connector).await
}

/// Connects to the peer at `addr`.
pub async fn connect(addr: &str) -> Result<Channel, tonic::transport::Error> {
    connect_endpoint(endpoint(addr)?).await
}
