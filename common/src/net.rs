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

/// Checks that `addr` is HOST:PORT, where HOST is an IP address (IPv6 in
/// brackets) or a DNS name (a Kubernetes Service, a VM's host name): names
/// are resolved at every connection, so a peer that moves keeps its name.
pub fn check_host_port(addr: &str) -> Result<(), String> {
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err("expected HOST:PORT".into());
    };
    port.parse::<u16>().map_err(|_| format!("bad port {port:?}"))?;
    let label_ok = |l: &str| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if host.is_empty() || host.len() > 253 || !host.trim_end_matches('.').split('.').all(label_ok) {
        return Err(format!("bad host {host:?} (an IP address or a DNS name)"));
    }
    Ok(())
}

/// Connects to the peer at `addr`.
pub async fn connect(addr: &str) -> Result<Channel, tonic::transport::Error> {
    connect_endpoint(endpoint(addr)?).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_accepts_ips_and_dns_names_and_refuses_the_rest() {
        for ok in ["127.0.0.1:6390", "[::1]:6390", "placement-0.placement.ringkv.svc:6390", "vm1:1"] {
            assert_eq!(check_host_port(ok), Ok(()), "{ok}");
        }
        for bad in ["placement", "host:", ":6390", "host:99999", "a b:1", "under_score:1", "http://x:1"] {
            assert!(check_host_port(bad).is_err(), "{bad}");
        }
    }
}
