//! `p11kms healthcheck`: one plain-HTTP `GET /healthz` to a running server, for container
//! health checks in images without curl. Bounded: 3 s to connect, answer and read.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::config::Config;
use crate::error::{KmsError, Result};

const LIMIT: Duration = Duration::from_secs(3);

/// Asks `address` (default: `metrics_listen`, else `server.listen`) for `/healthz`.
pub fn healthcheck(config: &Config, address: Option<&str>) -> Result<()> {
    let s = &config.server;
    let own = s.metrics_listen.as_deref().filter(|_| s.metrics);
    if address.is_none() && own.is_none() && s.tls_cert.is_some() {
        return Err(KmsError::config(
            "the server speaks TLS; set server.metrics_listen (plain HTTP, serves /healthz) \
             or pass --address",
        ));
    }
    // `server.listen` already carries P11KMS_LISTEN (Config::resolve applies it).
    let at = address.or(own).unwrap_or(&s.listen);
    let mut addr: SocketAddr = at
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| KmsError::config(format!("`{at}` is not an address to ask")))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let unhealthy = |why: String| KmsError::io(format!("{addr}: {why}"));
    let mut stream =
        TcpStream::connect_timeout(&addr, LIMIT).map_err(|e| unhealthy(e.to_string()))?;
    let _ = stream.set_read_timeout(Some(LIMIT));
    let _ = stream.set_write_timeout(Some(LIMIT));
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| unhealthy(e.to_string()))?;
    let mut head = [0u8; 64];
    let n = stream
        .read(&mut head)
        .map_err(|e| unhealthy(e.to_string()))?;
    let line = String::from_utf8_lossy(&head[..n]);
    let status = line.lines().next().unwrap_or("").trim();
    if status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.0 200") {
        Ok(())
    } else {
        Err(unhealthy(format!("answered {status:?}")))
    }
}
