//! `ferry-agent monitor`: the datapath's events as they happen. It asks the
//! programs for them (`ferry_monitor`), reads them from the `ferry_events`
//! ring buffer, and asks for none again when it stops, so that a node
//! nobody watches pays nothing for them.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsRawFd,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData, RingBuf};
use ferry_common::{
    EVENT_DROP, EVENT_FLOW, EVENT_REJECT, MAP_EVENTS, MAP_MONITOR, MAP_SERVICE_NAMES,
    MONITOR_DROPS, MONITOR_FLOWS, MonitorConfig, MonitorEvent, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
    ServiceName, outcome,
};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error(
        "cannot open the pinned map {path}: {source}; is the agent (of this version) running with this --pin-dir?"
    )]
    Open {
        path: String,
        source: aya::maps::MapError,
    },
    #[error("switching events {what}: {source}")]
    Switch {
        what: &'static str,
        source: aya::maps::MapError,
    },
    #[error("waiting for events: {0}")]
    Poll(std::io::Error),
}

/// Which events to show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Drop,
    Flow,
    All,
}

/// What `monitor` shows and for how long.
#[derive(Clone, Debug)]
pub struct Filter {
    pub kind: Kind,
    /// Flows of this Service only ("namespace/name", any port, or
    /// "namespace/name:port").
    pub service: Option<String>,
    /// Events with this address as source or destination.
    pub pod: Option<Ipv4Addr>,
    /// Stop after this many events.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

/// One event as printed.
#[derive(Debug, Serialize)]
pub struct Shown {
    pub kind: &'static str,
    /// Nanoseconds, CLOCK_MONOTONIC.
    pub ts_ns: u64,
    pub reason: Option<&'static str>,
    pub protocol: &'static str,
    pub src: String,
    pub dst: String,
    pub service: Option<String>,
    pub backend: Option<String>,
    pub snat: Option<String>,
    pub ifindex: u32,
}

fn endpoint(addr: [u8; 4], port: u16, protocol: u8) -> String {
    if protocol == PROTO_TCP || protocol == PROTO_UDP {
        SocketAddrV4::new(addr.into(), port).to_string()
    } else {
        Ipv4Addr::from(addr).to_string()
    }
}

fn protocol_name(p: u8) -> &'static str {
    match p {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        PROTO_ICMP => "icmp",
        _ => "other",
    }
}

/// `event` as shown, with `name` the name of its Service (flows).
pub fn show(event: &MonitorEvent, name: Option<String>) -> Shown {
    let p = event.protocol;
    // A reject's headers are those of the answer: swap them back so the
    // line names the packet that was refused.
    let (src, dst) = if event.kind == EVENT_REJECT {
        (
            endpoint(event.dst_addr, event.dst_port, p),
            endpoint(event.src_addr, event.src_port, p),
        )
    } else {
        (
            endpoint(event.src_addr, event.src_port, p),
            endpoint(event.dst_addr, event.dst_port, p),
        )
    };
    let flow = event.kind == EVENT_FLOW;
    Shown {
        kind: match event.kind {
            EVENT_DROP => "drop",
            EVENT_REJECT => "reject",
            EVENT_FLOW => "flow",
            _ => "?",
        },
        ts_ns: event.ts_ns,
        reason: (!flow).then(|| {
            outcome::NAMES
                .get(event.outcome as usize)
                .copied()
                .unwrap_or("?")
        }),
        protocol: protocol_name(p),
        src,
        dst,
        service: name,
        backend: flow.then(|| endpoint(event.nat_addr, event.nat_port, p)),
        snat: (flow && event.snat_addr != [0; 4])
            .then(|| endpoint(event.snat_addr, event.snat_port, p)),
        ifindex: event.ifindex,
    }
}

impl Shown {
    pub fn line(&self) -> String {
        let mut s = format!(
            "{} {} {} -> {}",
            self.kind, self.protocol, self.src, self.dst
        );
        if let Some(r) = self.reason {
            s += &format!(" reason={r}");
        }
        if let Some(svc) = &self.service {
            s += &format!(" service={svc}");
        }
        if let Some(b) = &self.backend {
            s += &format!(" backend={b}");
        }
        if let Some(n) = &self.snat {
            s += &format!(" snat={n}");
        }
        if self.ifindex != 0 {
            s += &format!(" ifindex={}", self.ifindex);
        }
        s
    }
}

/// Does `event` (named `name`) pass `filter`?
pub fn wanted(filter: &Filter, event: &MonitorEvent, name: Option<&str>) -> bool {
    let kind_ok = match filter.kind {
        Kind::All => true,
        Kind::Drop => event.kind == EVENT_DROP || event.kind == EVENT_REJECT,
        Kind::Flow => event.kind == EVENT_FLOW,
    };
    let service_ok = filter.service.as_deref().is_none_or(|want| {
        name.is_some_and(|n| n == want || n.rsplit_once(':').is_some_and(|(svc, _)| svc == want))
    });
    let pod_ok = filter.pod.is_none_or(|pod| {
        let a = pod.octets();
        event.src_addr == a || event.dst_addr == a || event.nat_addr == a
    });
    kind_ok && service_ok && pod_ok
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn open(pin_dir: &Path, name: &str) -> Result<MapData, MonitorError> {
    let path = pin_dir.join(name);
    MapData::from_pin(&path).map_err(|source| MonitorError::Open {
        path: path.display().to_string(),
        source,
    })
}

/// Switches the datapath's events on, and off again when dropped (also on
/// an error or a panic), so a monitor that ends leaves no cost behind.
struct Switch(Array<MapData, MonitorConfig>);

impl Switch {
    fn on(mut map: Array<MapData, MonitorConfig>, flags: u32) -> Result<Self, MonitorError> {
        map.set(0, MonitorConfig { flags }, 0)
            .map_err(|source| MonitorError::Switch { what: "on", source })?;
        Ok(Self(map))
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        if let Err(e) = self.0.set(0, MonitorConfig::default(), 0) {
            tracing::warn!(error = %e, "could not switch the datapath's events off");
        }
    }
}

/// Print events from the dataplane pinned under `pin_dir` as `filter`
/// says, one per line (`json`: one JSON object per line), until
/// interrupted or the filter's count or duration is reached.
pub fn run(
    pin_dir: &Path,
    filter: &Filter,
    json: bool,
    out: &mut dyn FnMut(&str) -> std::io::Result<()>,
) -> Result<u64, MonitorError> {
    let config: Array<MapData, MonitorConfig> = Map::Array(open(pin_dir, MAP_MONITOR)?)
        .try_into()
        .map_err(|source| MonitorError::Open {
            path: pin_dir.join(MAP_MONITOR).display().to_string(),
            source,
        })?;
    let mut ring: RingBuf<MapData> = Map::RingBuf(open(pin_dir, MAP_EVENTS)?)
        .try_into()
        .map_err(|source| MonitorError::Open {
            path: pin_dir.join(MAP_EVENTS).display().to_string(),
            source,
        })?;
    let names: Option<aya::maps::HashMap<MapData, u32, ServiceName>> =
        open(pin_dir, MAP_SERVICE_NAMES)
            .ok()
            .and_then(|m| Map::HashMap(m).try_into().ok());
    let flags = match filter.kind {
        Kind::Drop => MONITOR_DROPS,
        Kind::Flow => MONITOR_FLOWS,
        Kind::All => MONITOR_DROPS | MONITOR_FLOWS,
    };
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let _switch = Switch::on(config, flags)?;
    eprintln!("monitor: listening (Ctrl-C to stop)");
    let start = Instant::now();
    let mut shown = 0u64;
    loop {
        while let Some(item) = ring.next() {
            if item.len() < size_of::<MonitorEvent>() {
                continue;
            }
            let event: MonitorEvent =
                bytemuck::pod_read_unaligned(&item[..size_of::<MonitorEvent>()]);
            let name = (event.kind == EVENT_FLOW)
                .then(|| {
                    names
                        .as_ref()?
                        .get(&event.service_id, 0)
                        .ok()
                        .map(|n| n.as_str().to_string())
                })
                .flatten();
            if !wanted(filter, &event, name.as_deref()) {
                continue;
            }
            let shown_event = show(&event, name);
            let line = if json {
                serde_json::to_string(&shown_event).unwrap_or_default()
            } else {
                shown_event.line()
            };
            if out(&(line + "\n")).is_err() {
                return Ok(shown);
            }
            shown += 1;
            if filter.count.is_some_and(|n| shown >= n) {
                return Ok(shown);
            }
        }
        if STOP.load(Ordering::Relaxed) || filter.duration.is_some_and(|d| start.elapsed() >= d) {
            return Ok(shown);
        }
        let mut pfd = libc::pollfd {
            fd: ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, 200) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(MonitorError::Poll(err));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow() -> MonitorEvent {
        MonitorEvent {
            kind: EVENT_FLOW,
            protocol: PROTO_TCP,
            src_addr: [10, 244, 1, 2],
            dst_addr: [10, 96, 0, 10],
            nat_addr: [10, 244, 1, 3],
            src_port: 40000,
            dst_port: 80,
            nat_port: 8080,
            service_id: 1,
            ..MonitorEvent::default()
        }
    }

    #[test]
    fn filters_by_kind_service_and_pod() {
        let f = |kind, service: Option<&str>, pod: Option<&str>| Filter {
            kind,
            service: service.map(str::to_string),
            pod: pod.map(|p| p.parse().unwrap()),
            count: None,
            duration: None,
        };
        let e = flow();
        let name = Some("default/web:http");
        assert!(wanted(&f(Kind::Flow, None, None), &e, name));
        assert!(!wanted(&f(Kind::Drop, None, None), &e, name));
        assert!(wanted(&f(Kind::All, Some("default/web"), None), &e, name));
        assert!(wanted(
            &f(Kind::All, Some("default/web:http"), None),
            &e,
            name
        ));
        assert!(!wanted(&f(Kind::All, Some("default/db"), None), &e, name));
        assert!(wanted(&f(Kind::All, None, Some("10.244.1.3")), &e, name));
        assert!(!wanted(&f(Kind::All, None, Some("10.244.1.9")), &e, name));
    }

    #[test]
    fn a_reject_names_the_refused_packet_not_the_answer() {
        let answer = MonitorEvent {
            kind: EVENT_REJECT,
            outcome: outcome::REJECTED_NO_ENDPOINTS,
            protocol: PROTO_TCP,
            src_addr: [10, 96, 0, 10],
            src_port: 80,
            dst_addr: [10, 244, 1, 2],
            dst_port: 40000,
            ..MonitorEvent::default()
        };
        let s = show(&answer, None);
        assert_eq!(
            s.line(),
            "reject tcp 10.244.1.2:40000 -> 10.96.0.10:80 reason=rejected_no_endpoints"
        );
        let f = show(&flow(), Some("default/web:http".into()));
        assert_eq!(
            f.line(),
            "flow tcp 10.244.1.2:40000 -> 10.96.0.10:80 service=default/web:http backend=10.244.1.3:8080"
        );
    }
}
