//! Clients that run inside a pod's namespace.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpStream, UdpSocket},
    path::Path,
    time::Duration,
};

use anyhow::{Context, Result};
use ferry_harness::{Pod, in_netns};

const TIMEOUT: Duration = Duration::from_secs(2);

/// Ask `addr:port` over a fresh TCP connection who it is.
pub fn tcp_whoami(pod: &Pod, addr: Ipv4Addr, port: u16) -> Result<String> {
    tcp_ask_in(&pod.netns.path(), addr, port, b"?")
}

/// Ask `addr:port` over UDP who it is (a connected socket, so an ICMP error
/// comes back as an error).
pub fn udp_whoami(pod: &Pod, addr: Ipv4Addr, port: u16) -> Result<String> {
    udp_ask_in(&pod.netns.path(), addr, port, b"?")
}

/// From the namespace at `netns`: send `request` over a fresh TCP
/// connection to `addr:port` and return the answer (ferry-echo: `?` asks
/// its name, `@` the address it saw the client at).
pub fn tcp_ask_in(
    netns: &Path,
    addr: Ipv4Addr,
    port: u16,
    request: &'static [u8],
) -> Result<String> {
    in_netns(netns, move || -> Result<String> {
        let mut s = TcpStream::connect_timeout(&(addr, port).into(), TIMEOUT)
            .with_context(|| format!("connect {addr}:{port}"))?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.write_all(request)?;
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    })?
}

/// From the namespace at `netns`: `request` as one UDP datagram, the answer.
pub fn udp_ask_in(
    netns: &Path,
    addr: Ipv4Addr,
    port: u16,
    request: &'static [u8],
) -> Result<String> {
    in_netns(netns, move || -> Result<String> {
        let s = UdpSocket::bind(("0.0.0.0", 0))?;
        s.connect((addr, port))?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.send(request)?;
        let mut buf = [0u8; 256];
        let n = s
            .recv(&mut buf)
            .with_context(|| format!("recv from {addr}:{port}"))?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    })?
}

/// From the namespace at `netns`: `datagram` as one UDP datagram (large
/// ones leave in IPv4 fragments), and the one datagram that answers it.
pub fn udp_exchange_in(
    netns: &Path,
    addr: Ipv4Addr,
    port: u16,
    datagram: Vec<u8>,
) -> Result<Vec<u8>> {
    in_netns(netns, move || -> Result<Vec<u8>> {
        let s = UdpSocket::bind(("0.0.0.0", 0))?;
        s.connect((addr, port))?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.send(&datagram)?;
        let mut buf = vec![0u8; 65536];
        let n = s
            .recv(&mut buf)
            .with_context(|| format!("recv from {addr}:{port}"))?;
        buf.truncate(n);
        Ok(buf)
    })?
}

/// From the namespace at `netns`: `GET /` over HTTP/1.1; (status code,
/// body).
pub fn http_get_in(netns: &Path, addr: Ipv4Addr, port: u16) -> Result<(u16, String)> {
    in_netns(netns, move || -> Result<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&(addr, port).into(), TIMEOUT)
            .with_context(|| format!("connect {addr}:{port}"))?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.write_all(format!("GET / HTTP/1.1\r\nHost: {addr}:{port}\r\n\r\n").as_bytes())?;
        let mut response = String::new();
        s.read_to_string(&mut response)?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("not an HTTP response: {response:?}"))?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    })?
}

/// TCP connect and report the error kind, or None when it connected.
pub fn tcp_connect_error(
    pod: &Pod,
    addr: Ipv4Addr,
    port: u16,
) -> Result<Option<std::io::ErrorKind>> {
    pod.run(move || {
        TcpStream::connect_timeout(&(addr, port).into(), TIMEOUT)
            .err()
            .map(|e| e.kind())
    })
}

/// A UDP client that keeps its source port, as a DNS resolver does: bound
/// to `local_port` in the pod and connected to a Service, so every query
/// belongs to one flow for as long as it keeps asking.
pub struct FixedPortUdp(UdpSocket);

impl FixedPortUdp {
    /// The socket in `pod`'s namespace (it stays there when used from
    /// another thread).
    pub fn open(pod: &Pod, local_port: u16, addr: Ipv4Addr, port: u16) -> Result<Self> {
        let socket = pod.run(move || -> std::io::Result<UdpSocket> {
            let s = UdpSocket::bind(("0.0.0.0", local_port))?;
            s.connect((addr, port))?;
            s.set_read_timeout(Some(Duration::from_millis(300)))?;
            Ok(s)
        })??;
        Ok(Self(socket))
    }

    /// Ask who answers (ferry-echo's `?`); None when nothing came back in
    /// 300 ms.
    pub fn ask(&self) -> Option<String> {
        self.0.send(b"?").ok()?;
        let mut buf = [0u8; 64];
        let n = self.0.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    }
}

/// Wait (up to 15 s) until `addr:port` answers `pod` over TCP: the agent
/// has programmed it. `log` says what the agent did, for the failure.
pub fn wait_until_answers(pod: &Pod, addr: Ipv4Addr, port: u16, log: impl Fn() -> String) {
    let start = std::time::Instant::now();
    while tcp_whoami(pod, addr, port).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{addr}:{port} never answered:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
