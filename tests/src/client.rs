//! Clients that run inside a pod's namespace.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{Context, Result};
use ferry_harness::Pod;

const TIMEOUT: Duration = Duration::from_secs(2);

/// Ask `addr:port` over a fresh TCP connection who it is.
pub fn tcp_whoami(pod: &Pod, addr: Ipv4Addr, port: u16) -> Result<String> {
    pod.run(move || -> Result<String> {
        let mut s = TcpStream::connect_timeout(&(addr, port).into(), TIMEOUT)
            .with_context(|| format!("connect {addr}:{port}"))?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.write_all(b"?")?;
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    })?
}

/// Ask `addr:port` over UDP who it is (a connected socket, so an ICMP error
/// comes back as an error).
pub fn udp_whoami(pod: &Pod, addr: Ipv4Addr, port: u16) -> Result<String> {
    pod.run(move || -> Result<String> {
        let s = UdpSocket::bind(("0.0.0.0", 0))?;
        s.connect((addr, port))?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.send(b"?")?;
        let mut buf = [0u8; 256];
        let n = s
            .recv(&mut buf)
            .with_context(|| format!("recv from {addr}:{port}"))?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
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
