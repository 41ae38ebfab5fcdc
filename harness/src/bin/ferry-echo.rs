//! A tiny TCP and UDP server for pods in the harness. A request of one `?`
//! byte is answered with the server's name and a newline, one `@` byte with
//! the address the request came from (to see whether a client's address
//! was kept); anything else is echoed back as it came.
//! `ferry-echo NAME PORT`.
use std::{
    io::{Read, Write},
    net::{TcpListener, UdpSocket},
    thread,
};

fn answer(name: &str, request: &[u8], peer: std::net::SocketAddr) -> Vec<u8> {
    match request {
        b"?" => format!("{name}\n").into_bytes(),
        b"@" => format!("{}\n", peer.ip()).into_bytes(),
        _ => request.to_vec(),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().expect("usage: ferry-echo NAME PORT");
    let port: u16 = args
        .next()
        .and_then(|p| p.parse().ok())
        .expect("usage: ferry-echo NAME PORT");
    let udp = UdpSocket::bind(("0.0.0.0", port)).expect("bind UDP");
    let udp_name = name.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 65536];
        loop {
            if let Ok((n, peer)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(&answer(&udp_name, &buf[..n], peer), peer);
            }
        }
    });
    let tcp = TcpListener::bind(("0.0.0.0", port)).expect("bind TCP");
    for stream in tcp.incoming() {
        let Ok(mut stream) = stream else { continue };
        let name = name.clone();
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let mut buf = [0u8; 65536];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if stream.write_all(&answer(&name, &buf[..n], peer)).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}
