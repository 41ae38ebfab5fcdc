//! A tiny TCP and UDP server for pods in the harness. A request of one `?`
//! byte is answered with the server's name and a newline; anything else is
//! echoed back as it came. `ferry-echo NAME PORT`.
use std::{
    io::{Read, Write},
    net::{TcpListener, UdpSocket},
    thread,
};

fn answer(name: &str, request: &[u8]) -> Vec<u8> {
    if request == b"?" {
        format!("{name}\n").into_bytes()
    } else {
        request.to_vec()
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
                let _ = udp.send_to(&answer(&udp_name, &buf[..n]), peer);
            }
        }
    });
    let tcp = TcpListener::bind(("0.0.0.0", port)).expect("bind TCP");
    for stream in tcp.incoming() {
        let Ok(mut stream) = stream else { continue };
        let name = name.clone();
        thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let mut buf = [0u8; 65536];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if stream.write_all(&answer(&name, &buf[..n])).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}
