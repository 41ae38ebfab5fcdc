//! Just enough HTTP/1.1: read requests (with a Content-Length body) off a
//! kept-alive connection, write JSON responses and chunked watch streams.
use std::{
    io::{self, Read, Write},
    net::TcpStream,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use serde_json::Value;

/// Reads wake up this often to check for shutdown.
const READ_POLL: Duration = Duration::from_millis(100);
/// A client that stops reading a watch stream is dropped after this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEAD: usize = 1 << 20;
const MAX_BODY: usize = 64 << 20;

pub(super) struct Request {
    pub(crate) method: String,
    /// The request target as sent ("/api/v1/services?limit=500").
    pub(crate) target: String,
    /// The path, percent-decoded.
    pub(crate) path: String,
    /// Query parameters, percent-decoded, in order.
    pub(crate) query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    http10: bool,
    pub(crate) body: Vec<u8>,
}

impl Request {
    /// The first value of query parameter `name`.
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean query parameter ("true" or "1", as the server's decoder
    /// accepts).
    pub(crate) fn flag(&self, name: &str) -> bool {
        matches!(self.param(name), Some("true" | "1"))
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn wants_close(&self) -> bool {
        let conn = self.header("connection").map(str::to_ascii_lowercase);
        match conn.as_deref() {
            Some(c) if c.contains("close") => true,
            Some(c) if c.contains("keep-alive") => false,
            _ => self.http10,
        }
    }
}

/// One client connection. `buf` holds bytes read past the current request
/// (the start of the next one).
pub(super) struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Whether the client asked to close after this response.
    close: bool,
}

impl Conn {
    pub(crate) fn new(stream: TcpStream) -> io::Result<Self> {
        // An accepted socket must block (with timeouts), whatever the
        // listener was.
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(READ_POLL))?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::new(),
            close: false,
        })
    }

    /// The next request, or None when the client closed the connection or
    /// the server is shutting down.
    pub(crate) fn read_request(&mut self, shutdown: &AtomicBool) -> io::Result<Option<Request>> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(io::Error::other("request head too large"));
            }
            if !self.fill(shutdown)? {
                return Ok(None);
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end + 4);
        let mut req = parse_head(&head)?;
        let len: usize = match req.header("content-length") {
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| io::Error::other("bad Content-Length"))?,
            None => 0,
        };
        if len > MAX_BODY || req.header("transfer-encoding").is_some() {
            // Clients send writes with a Content-Length; anything else
            // is refused rather than misread.
            return Err(io::Error::other("unsupported request body framing"));
        }
        while self.buf.len() < len {
            if !self.fill(shutdown)? {
                return Ok(None);
            }
        }
        req.body = self.buf.drain(..len).collect();
        self.close = req.wants_close();
        Ok(Some(req))
    }

    /// Read more bytes into `buf`; false on EOF or shutdown.
    fn fill(&mut self, shutdown: &AtomicBool) -> io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if shutdown.load(Ordering::SeqCst) {
                return Ok(false);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// A complete JSON response.
    pub(crate) fn respond_json(&mut self, code: u16, body: &Value) -> io::Result<()> {
        let body = serde_json::to_vec(body).map_err(io::Error::other)?;
        self.respond(code, "application/json", &body)
    }

    pub(crate) fn respond(&mut self, code: u16, content_type: &str, body: &[u8]) -> io::Result<()> {
        let mut out = format!(
            "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nCache-Control: no-cache, private\r\n\
             Content-Length: {}\r\n",
            reason_phrase(code),
            body.len()
        )
        .into_bytes();
        if self.close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        self.stream.write_all(&out)
    }

    /// Start a watch stream: 200, chunked, one JSON document per line.
    pub(crate) fn start_stream(&mut self) -> io::Result<()> {
        let mut head = String::from(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-cache, private\r\n\
             Transfer-Encoding: chunked\r\n",
        );
        if self.close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        self.stream.write_all(head.as_bytes())
    }

    /// Send documents, each as one line in its own chunk.
    pub(crate) fn send_lines(&mut self, docs: &[Value]) -> io::Result<()> {
        let mut out = Vec::new();
        for doc in docs {
            let mut line = serde_json::to_vec(doc).map_err(io::Error::other)?;
            line.push(b'\n');
            out.extend_from_slice(format!("{:x}\r\n", line.len()).as_bytes());
            out.extend_from_slice(&line);
            out.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&out)
    }

    /// End a watch stream cleanly (the last chunk); the connection stays
    /// usable.
    pub(crate) fn end_stream(&mut self) -> io::Result<()> {
        self.stream.write_all(b"0\r\n\r\n")
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(head: &str) -> io::Result<Request> {
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(io::Error::other(format!(
            "bad request line {request_line:?}"
        )));
    };
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Request {
        method: method.to_string(),
        target: target.to_string(),
        path: percent_decode(path, false),
        query: parse_query(query),
        headers,
        http10: version == "HTTP/1.0",
        body: Vec::new(),
    })
}

/// `a=1&b=x%2Cy` → [("a","1"), ("b","x,y")]; '+' is a space in queries.
pub(super) fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        500 => "Internal Server Error",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = parse_query("labelSelector=%21a%2C%21b&limit=2&x=a+b&watch");
        assert_eq!(q[0], ("labelSelector".into(), "!a,!b".into()));
        assert_eq!(q[1], ("limit".into(), "2".into()));
        assert_eq!(q[2], ("x".into(), "a b".into()));
        assert_eq!(q[3], ("watch".into(), "".into()));
        assert_eq!(percent_decode("100%", true), "100%");
        assert_eq!(percent_decode("%4", true), "%4");
    }
}
