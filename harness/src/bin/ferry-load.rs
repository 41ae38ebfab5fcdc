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
