//! The benchmark's load generator and server, run inside pod namespaces.
//!
//! `ferry-load serve PORT THREADS`: a TCP echo server with a fixed pool of
//! threads, so that no thread is spawned per connection and the server's
//! own cost stays small next to the network path being measured.
//!
//! `ferry-load crr ADDR:PORT CLIENTS SECONDS`: connection rate. CLIENTS
//! threads each loop on connect, 1-byte request, 1-byte response, close.
//!
//! `ferry-load rr ADDR:PORT SECONDS`: request/response latency on one
//! connection, one byte each way.
//!
//! `ferry-load udp ADDR:PORT CLIENTS SECONDS`: UDP request/response rate,
//! CLIENTS sockets each sending one byte and waiting for the answer (every
//! exchange is two packets through the path). The server echoes UDP too.
//!
//! `ferry-load blast ADDR:PORT SECONDS`: one-way UDP datagrams as fast as
//! one thread can send them; `ferry-load sink PORT FILE`: counts what
//! arrives and keeps `<unix-ms> <total>` in FILE (replaced every 100 ms),
//! so the receiving side measures packets per second through the path.
//!
//! Results are one JSON object on stdout.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

const USAGE: &str =
    "usage: ferry-load serve PORT THREADS | crr ADDR:PORT CLIENTS SECONDS | rr ADDR:PORT SECONDS";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve", port, threads] => serve(parse(port), parse(threads)),
        ["crr", addr, clients, seconds] => crr(parse(addr), parse(clients), parse(seconds)),
        ["rr", addr, seconds] => rr(parse(addr), parse(seconds)),
        ["udp", addr, clients, seconds] => udp(parse(addr), parse(clients), parse(seconds)),
        ["blast", addr, seconds] => blast(parse(addr), parse(seconds)),
        ["sink", port, file] => sink(parse(port), std::path::PathBuf::from(file)),
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-load: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse<T: std::str::FromStr>(s: &str) -> T {
    s.parse().unwrap_or_else(|_| {
        eprintln!("ferry-load: cannot parse {s:?}\n{USAGE}");
        std::process::exit(2)
    })
}

fn serve(port: u16, threads: usize) -> Result<(), String> {
    let listener = Arc::new(
        TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("bind port {port}: {e}"))?,
    );
    let udp = Arc::new(
        std::net::UdpSocket::bind(("0.0.0.0", port))
            .map_err(|e| format!("bind UDP port {port}: {e}"))?,
    );
    for _ in 0..2 {
        let udp = udp.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            loop {
                if let Ok((n, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&buf[..n], peer);
                }
            }
        });
    }
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let listener = listener.clone();
            thread::spawn(move || {
                loop {
                    if let Ok((stream, _)) = listener.accept() {
                        echo(stream);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

fn echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

fn one_exchange(stream: &mut TcpStream) -> std::io::Result<()> {
    stream.write_all(b"x")?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte)
}

fn crr(addr: SocketAddr, clients: usize, seconds: f64) -> Result<(), String> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let start = Instant::now();
    let threads: Vec<_> = (0..clients.max(1))
        .map(|_| {
            let (stop, done, errors, first_error) = (
                stop.clone(),
                done.clone(),
                errors.clone(),
                first_error.clone(),
            );
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let outcome = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                        .and_then(|mut s| {
                            s.set_nodelay(true)?;
                            s.set_read_timeout(Some(Duration::from_secs(1)))?;
                            one_exchange(&mut s)
                        });
                    match outcome {
                        Ok(()) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            first_error
                                .lock()
                                .unwrap()
                                .get_or_insert_with(|| e.to_string());
                        }
                    }
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let first_error = first_error.lock().unwrap().clone().unwrap_or_default();
    println!(
        "{{\"connections\":{},\"errors\":{},\"seconds\":{elapsed:.3},\"first_error\":{:?}}}",
        done.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        first_error
    );
    Ok(())
}

fn rr(addr: SocketAddr, seconds: f64) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    // Warm the path (ARP, conntrack, caches) before recording.
    for _ in 0..200 {
        one_exchange(&mut s).map_err(|e| format!("exchange with {addr}: {e}"))?;
    }
    let mut samples_ns = Vec::with_capacity(200_000);
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        let t = Instant::now();
        one_exchange(&mut s).map_err(|e| format!("exchange with {addr}: {e}"))?;
        samples_ns.push(t.elapsed().as_nanos() as u64);
    }
    samples_ns.sort_unstable();
    let pct = |p: f64| samples_ns[((samples_ns.len() - 1) as f64 * p) as usize];
    println!(
        "{{\"samples\":{},\"p50_ns\":{},\"p99_ns\":{}}}",
        samples_ns.len(),
        pct(0.50),
        pct(0.99)
    );
    Ok(())
}

fn udp(addr: SocketAddr, clients: usize, seconds: f64) -> Result<(), String> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..clients.max(1))
        .map(|_| {
            let (stop, done, lost) = (stop.clone(), done.clone(), lost.clone());
            thread::spawn(move || -> Result<(), String> {
                let s = std::net::UdpSocket::bind(("0.0.0.0", 0)).map_err(|e| e.to_string())?;
                s.connect(addr).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .map_err(|e| e.to_string())?;
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    let ok = s.send(b"x").is_ok() && s.recv(&mut buf).is_ok();
                    if ok {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(())
            })
        })
        .collect();
    thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join()
            .map_err(|_| "client thread panicked".to_string())??;
    }
    println!(
        "{{\"exchanges\":{},\"lost\":{},\"seconds\":{:.3}}}",
        done.load(Ordering::Relaxed),
        lost.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn blast(addr: SocketAddr, seconds: f64) -> Result<(), String> {
    let s = std::net::UdpSocket::bind(("0.0.0.0", 0)).map_err(|e| e.to_string())?;
    s.connect(addr).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let (mut sent, mut failed) = (0u64, 0u64);
    while Instant::now() < end {
        for _ in 0..64 {
            if s.send(b"x").is_ok() {
                sent += 1;
            } else {
                failed += 1;
            }
        }
    }
    println!(
        "{{\"sent\":{sent},\"failed\":{failed},\"seconds\":{:.3}}}",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Count datagrams on `port`; keep `<unix-ms> <total>` in `file`.
fn sink(port: u16, file: std::path::PathBuf) -> Result<(), String> {
    let s = std::net::UdpSocket::bind(("0.0.0.0", port))
        .map_err(|e| format!("bind UDP port {port}: {e}"))?;
    let total = Arc::new(AtomicU64::new(0));
    let reporter = total.clone();
    thread::spawn(move || {
        let tmp = file.with_extension("tmp");
        loop {
            thread::sleep(Duration::from_millis(100));
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            let line = format!("{now} {}\n", reporter.load(Ordering::Relaxed));
            if std::fs::write(&tmp, line).is_ok() {
                let _ = std::fs::rename(&tmp, &file);
            }
        }
    });
    let mut buf = [0u8; 2048];
    loop {
        if s.recv(&mut buf).is_ok() {
            total.fetch_add(1, Ordering::Relaxed);
        }
    }
}
