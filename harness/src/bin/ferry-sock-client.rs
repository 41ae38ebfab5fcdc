//! One client call sequence, run as its own process so the harness can put
//! it into a cgroup and a network namespace (cgroup membership is per
//! process). It prints one line of what the sockets reported:
//! `peer=A:P` (getpeername), `from=A:P` (recvfrom), `answer=TEXT`, or
//! `error=ERRNO step=STEP ms=MS` for the first call that failed.
//!
//! `ferry-sock-client tcp|udp|udpc|tcp-held ADDR PORT REQUEST`: `tcp`
//! connects, `udp` sends from an unconnected socket and reads with
//! recvfrom, `udpc` connects a UDP socket first; `tcp-held` asks once,
//! prints, then asks again on the same connection for every line on stdin
//! (a connection that must outlive something the test does meanwhile).
//!
//! `ferry-sock-client udpc-loop ADDR PORT REQUEST [SECONDS]`: one connected
//! UDP socket that asks every 100 ms for SECONDS (default 30) and prints a
//! line per ask, `ms=MS answer=TEXT` or `error=ERRNO step=STEP ms=MS`
//! (MS since start; a failed send adds the socket's pending error,
//! ` so_error=ERRNO`), never reconnecting: what an application with one
//! long-lived connected socket sees.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

const TIMEOUT: Duration = Duration::from_secs(2);

fn failed(step: &str, e: std::io::Error, start: Instant) -> String {
    format!(
        "error={} step={step} ms={}",
        e.raw_os_error().unwrap_or(-1),
        start.elapsed().as_millis()
    )
}

fn tcp(to: SocketAddr, request: &[u8], start: Instant) -> String {
    let mut s = match TcpStream::connect_timeout(&to, TIMEOUT) {
        Ok(s) => s,
        Err(e) => return failed("connect", e, start),
    };
    let peer = match s.peer_addr() {
        Ok(p) => p,
        Err(e) => return failed("getpeername", e, start),
    };
    let _ = s.set_read_timeout(Some(TIMEOUT));
    if let Err(e) = s.write_all(request) {
        return failed("send", e, start);
    }
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(n) => format!(
            "peer={peer} answer={}",
            String::from_utf8_lossy(&buf[..n]).trim()
        ),
        Err(e) => failed("recv", e, start),
    }
}

fn tcp_held(to: SocketAddr, request: &[u8], start: Instant) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&to, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    let peer = s.peer_addr()?;
    let mut lines = std::io::stdin().lines();
    loop {
        s.write_all(request)?;
        let mut buf = [0u8; 256];
        let line = match s.read(&mut buf) {
            Ok(0) => "error=eof step=recv".to_string(),
            Ok(n) => format!(
                "peer={peer} answer={}",
                String::from_utf8_lossy(&buf[..n]).trim()
            ),
            Err(e) => failed("recv", e, start),
        };
        println!("{line}");
        std::io::stdout().flush()?;
        if lines.next().is_none() {
            return Ok(());
        }
    }
}

fn udp(to: SocketAddr, request: &[u8], connected: bool, start: Instant) -> String {
    let s = match UdpSocket::bind(("0.0.0.0", 0)) {
        Ok(s) => s,
        Err(e) => return failed("bind", e, start),
    };
    let _ = s.set_read_timeout(Some(TIMEOUT));
    let mut seen = String::new();
    if connected {
        if let Err(e) = s.connect(to) {
            return failed("connect", e, start);
        }
        match s.peer_addr() {
            Ok(p) => seen = format!("peer={p} "),
            Err(e) => return failed("getpeername", e, start),
        }
        if let Err(e) = s.send(request) {
            return failed("send", e, start);
        }
    } else if let Err(e) = s.send_to(request, to) {
        return failed("send", e, start);
    }
    let mut buf = [0u8; 512];
    match s.recv_from(&mut buf) {
        Ok((n, from)) => format!(
            "{seen}from={from} answer={}",
            String::from_utf8_lossy(&buf[..n]).trim()
        ),
        Err(e) => failed("recv", e, start),
    }
}

fn udp_loop(to: SocketAddr, request: &[u8], seconds: u64, start: Instant) -> std::io::Result<()> {
    let s = UdpSocket::bind(("0.0.0.0", 0))?;
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    s.connect(to)?;
    let mut out = std::io::stdout();
    let mut buf = [0u8; 512];
    while start.elapsed() < Duration::from_secs(seconds) {
        let asked = Instant::now();
        let line = match s.send(request) {
            // What the kernel left pending on the socket, too (SO_ERROR):
            // a socket it disconnected fails the send with EDESTADDRREQ
            // before the pending error is read.
            Err(e) => match s.take_error() {
                Ok(Some(pending)) => format!(
                    "{} so_error={}",
                    failed("send", e, start),
                    pending.raw_os_error().unwrap_or(-1)
                ),
                _ => failed("send", e, start),
            },
            Ok(_) => match s.recv(&mut buf) {
                Ok(n) => format!(
                    "ms={} answer={}",
                    start.elapsed().as_millis(),
                    String::from_utf8_lossy(&buf[..n]).trim()
                ),
                Err(e) => failed("recv", e, start),
            },
        };
        writeln!(out, "{line}")?;
        out.flush()?;
        std::thread::sleep(Duration::from_millis(100).saturating_sub(asked.elapsed()));
    }
    Ok(())
}

fn main() {
    let usage =
        "usage: ferry-sock-client tcp|udp|udpc|tcp-held|udpc-loop ADDR PORT REQUEST [SECONDS]";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, addr, port, request, seconds) = match args.as_slice() {
        [mode, addr, port, request] => (mode, addr, port, request, 30),
        [mode, addr, port, request, seconds] => {
            (mode, addr, port, request, seconds.parse().expect(usage))
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let addr: Ipv4Addr = addr.parse().expect(usage);
    let port: u16 = port.parse().expect(usage);
    let to = SocketAddr::from((addr, port));
    let start = Instant::now();
    let line = match mode.as_str() {
        "tcp" => tcp(to, request.as_bytes(), start),
        "udp" => udp(to, request.as_bytes(), false, start),
        "udpc" => udp(to, request.as_bytes(), true, start),
        "tcp-held" => match tcp_held(to, request.as_bytes(), start) {
            Ok(()) => return,
            Err(e) => failed("tcp-held", e, start),
        },
        // (Stdout closed: the test stopped reading.)
        "udpc-loop" => match udp_loop(to, request.as_bytes(), seconds, start) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return,
            Err(e) => failed("udpc-loop", e, start),
        },
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    println!("{line}");
}
