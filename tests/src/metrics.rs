//! The agent's `/metrics` as the end-to-end tests read it: a scrape from
//! inside the node's namespace, and the value of one sample.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpStream},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use ferry_harness::{Node, in_netns};

/// The port the harness's agents serve `/metrics` on (the default
/// `--metrics-address 0.0.0.0:9402`, in the node's namespace).
pub const METRICS_PORT: u16 = 9402;

/// GET /metrics from `node`'s agent: the body.
pub fn scrape(node: &Node) -> Result<String> {
    in_netns(&node.netns.path(), || -> Result<String> {
        let addr = (Ipv4Addr::LOCALHOST, METRICS_PORT).into();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .context("connecting to the agent's metrics address")?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut response = String::new();
        s.read_to_string(&mut response)?;
        let Some((head, body)) = response.split_once("\r\n\r\n") else {
            bail!("not an HTTP response: {response:?}");
        };
        // hyper answers an HTTP/1.0 request in kind.
        if head.split_whitespace().nth(1) != Some("200") {
            bail!("/metrics answered {head}");
        }
        Ok(body.to_string())
    })?
}

/// The value of the sample `name{labels}` in the exposition `text`, with
/// `labels` exactly as the agent writes them (`namespace="default",...`,
/// or "" for none); None when there is no such sample.
pub fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let series = match labels {
        "" => format!("{name} "),
        _ => format!("{name}{{{labels}}} "),
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
}

/// The labels of a Service port's per-Service metrics.
pub fn service_labels(namespace: &str, name: &str, port: &str, protocol: &str) -> String {
    format!("namespace=\"{namespace}\",name=\"{name}\",port=\"{port}\",protocol=\"{protocol}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_found_by_its_exact_series() {
        let text = "# TYPE x_total counter\nx_total{a=\"1\"} 3\nx_total{a=\"12\"} 4\nx_total 5\n";
        assert_eq!(sample(text, "x_total", "a=\"1\""), Some(3.0));
        assert_eq!(sample(text, "x_total", "a=\"12\""), Some(4.0));
        assert_eq!(sample(text, "x_total", ""), Some(5.0));
        assert_eq!(sample(text, "x", ""), None);
        assert_eq!(sample(text, "x_total", "a=\"2\""), None);
    }
}
