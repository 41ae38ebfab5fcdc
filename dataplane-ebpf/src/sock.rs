//! Socket-level load balancing (cgroup v2 sock_addr hooks, after Cilium's
//! bpf_sock.c): connect() and UDP sendmsg() to a Service frontend are
//! given a backend before any packet exists, so the packets carry the
//! backend address and tc passes them as ordinary pod or host traffic;
//! recvmsg() and getpeername() report the frontend again, from
//! `ferry_sock_rev` (keyed by socket cookie).
//!
//! The backend choice is tc's: the same frontends (ClusterIPs, then the
//! external addresses as pods reach them: any endpoint, no source NAT),
//! the same pure planner with the same draw, affinity and source ranges.
use aya_ebpf::{
    EbpfContext,
    bindings::bpf_sock_addr,
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use ferry_common::{
    LOOPBACK_ADDR, PROTO_TCP, PROTO_UDP, SCOPE_CLUSTER_IP, SCOPE_EXTERNAL_FROM_PODS,
    SERVICE_FLAG_AFFINITY, SERVICE_FLAG_SOURCE_RANGES, SOCK_FLAG_PODS, ServiceKey, ServiceValue,
    SockRevKey, SockRevValue,
    new_flow::{Client, NewFlow, plan},
    outcome,
};

use crate::{
    balance,
    decision::{count, count_for_service, service_stats},
    maps::{NODE, SERVICES, SOCK_CONFIG, SOCK_REVERSE},
};

/// What a cgroup sock_addr program returns: let the call go on (with the
/// address as the program left it)...
const PROCEED: i32 = 1;
/// ...or fail it, with EPERM unless `bpf_set_retval` chose another error.
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;
const ENOMEM: i32 = 12;

/// Whose socket it is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// A process of the node's own network namespace (host-network pods,
    /// the kubelet, the agent).
    Node,
    /// A pod (its own network namespace), translated with `--socket-lb on`.
    Pod,
}

/// The owner of the socket, if it is to be translated at all: never before
/// the agent has written the node's netns cookie, pods only when enabled.
#[inline(always)]
fn owner(ctx: &SockAddrContext) -> Option<Owner> {
    let config = SOCK_CONFIG.get(0)?;
    if config.host_netns_cookie == 0 {
        return None;
    }
    // SAFETY: a sock_addr context, which this helper accepts.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if netns == config.host_netns_cookie {
        Some(Owner::Node)
    } else if config.flags & SOCK_FLAG_PODS != 0 {
        Some(Owner::Pod)
    } else {
        None
    }
}

#[inline(always)]
fn lookup(addr: [u8; 4], port: u16, protocol: u8, scope: u8) -> Option<ServiceValue> {
    let key = ServiceKey {
        addr,
        port,
        protocol,
        scope,
    };
    // SAFETY: copied out at once.
    (unsafe { SERVICES.get(key) }).copied()
}

/// The frontend `addr:port` is, for a socket of `owner`. 127.0.0.1 is the
/// node's loopback only in the node's namespace.
#[inline(always)]
fn frontend(owner: Owner, addr: [u8; 4], port: u16, protocol: u8) -> Option<ServiceValue> {
    if addr[0] == 127 {
        if owner == Owner::Node && addr == LOOPBACK_ADDR {
            return lookup(LOOPBACK_ADDR, port, protocol, SCOPE_EXTERNAL_FROM_PODS);
        }
        return None;
    }
    lookup(addr, port, protocol, SCOPE_CLUSTER_IP)
        .or_else(|| lookup(addr, port, protocol, SCOPE_EXTERNAL_FROM_PODS))
}

/// The client address affinity and source ranges see: the one the socket
/// sends from when it is known (bound, or given to sendmsg with
/// IP_PKTINFO); else, for the node's own sockets, the node's address (what
/// the kernel picks towards pods of other nodes, and what tc would see);
/// else None (a pod's unbound socket: tc, which sees the pod's address,
/// decides for frontends that need it).
#[inline(always)]
fn client_addr(sa: &bpf_sock_addr, owner: Owner, sendmsg: bool) -> Option<[u8; 4]> {
    let mut src = if sendmsg { sa.msg_src_ip4 } else { 0 };
    if src == 0 {
        // SAFETY: `sk` is always set in a sock_addr context.
        src = unsafe { (*sa.__bindgen_anon_1.sk).src_ip4 };
    }
    if src != 0 {
        return Some(src.to_ne_bytes());
    }
    match owner {
        Owner::Node => Some(NODE.get(0).map_or([0; 4], |n| n.node_addr)),
        Owner::Pod => None,
    }
}

/// Record which frontend `backend` stands for on this socket, unless it
/// already is. Err: the map refused the write.
#[inline(always)]
fn remember(key: &SockRevKey, value: &SockRevValue) -> Result<(), ()> {
    if let Some(known) = SOCK_REVERSE.get_ptr(*key) {
        // SAFETY: read at once.
        if unsafe { *known } == *value {
            return Ok(());
        }
    } else {
        count(outcome::SOCK_REVERSE_NEW, 0);
    }
    SOCK_REVERSE.insert(*key, *value, 0).map_err(|_| ())
}

/// connect4 and sendmsg4: a frontend becomes a backend.
#[inline(always)]
pub fn forward(ctx: &SockAddrContext, sendmsg: bool) -> i32 {
    // SAFETY: the context the program was called with.
    let sa = unsafe { &mut *ctx.sock_addr };
    let protocol = sa.protocol as u8;
    if protocol != PROTO_TCP && protocol != PROTO_UDP {
        return PROCEED;
    }
    let Some(owner) = owner(ctx) else {
        return PROCEED;
    };
    // user_ip4 holds the wire bytes; user_port the network-order port in
    // its low 16 bits.
    let addr = sa.user_ip4.to_ne_bytes();
    let port = u16::from_be(sa.user_port as u16);
    let Some(service) = frontend(owner, addr, port, protocol) else {
        return PROCEED;
    };
    let needs_client = service.flags & (SERVICE_FLAG_AFFINITY | SERVICE_FLAG_SOURCE_RANGES) != 0;
    let client = match client_addr(sa, owner, sendmsg) {
        Some(client) => client,
        None if needs_client => {
            count(outcome::SOCK_PASSED_TO_TC, 0);
            return PROCEED;
        }
        None => [0; 4],
    };
    let planned = plan(
        &service,
        Client::Pod,
        #[inline(always)]
        || balance::in_source_ranges(&service, client),
        #[inline(always)]
        || balance::pick_backend(&service, client, false).map(|(backend, _)| backend),
        |_| true,
    );
    let backend = match planned {
        NewFlow::Direct(b) | NewFlow::LocalPolicy(b) | NewFlow::SourceNat(b) => b,
        NewFlow::Reject => {
            count(outcome::SOCK_REJECTED_NO_ENDPOINTS, 0);
            count_for_service(service.service_id, outcome::SOCK_REJECTED_NO_ENDPOINTS, 0);
            // SAFETY: allowed in connect4 and sendmsg4.
            unsafe { bpf_set_retval(-ECONNREFUSED) };
            return REJECT;
        }
        NewFlow::Drop(outcome::DROP_SOURCE_RANGE) => {
            count(outcome::SOCK_DROP_SOURCE_RANGE, 0);
            count_for_service(service.service_id, outcome::SOCK_DROP_SOURCE_RANGE, 0);
            return REJECT;
        }
        NewFlow::Drop(_) => {
            count(outcome::SOCK_PASSED_TO_TC, 0);
            return PROCEED;
        }
    };
    let key = SockRevKey {
        // SAFETY: a sock_addr context, which this helper accepts.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        backend_addr: backend.addr,
        backend_port: backend.port,
        pad: 0,
    };
    let value = SockRevValue {
        frontend_addr: addr,
        frontend_port: port,
        pad: 0,
        service_id: service.service_id,
    };
    // Without the entry the application would see the backend as its
    // peer (a resolver drops such an answer): fail the call instead.
    if remember(&key, &value).is_err() {
        count(outcome::DROP_SOCK_REVERSE_WRITE, 0);
        // SAFETY: allowed in connect4 and sendmsg4.
        unsafe { bpf_set_retval(-ENOMEM) };
        return REJECT;
    }
    sa.user_ip4 = u32::from_ne_bytes(backend.addr);
    sa.user_port = u32::from(backend.port.to_be());
    count(outcome::SOCK_TRANSLATED, 0);
    // A connect() starts a connection; a datagram sent unconnected is one
    // packet (whose size this hook does not see).
    if let Some(stats) = service_stats(service.service_id) {
        if sendmsg {
            stats.packets += 1;
        } else {
            stats.new_connections += 1;
        }
    }
    PROCEED
}

/// recvmsg4 and getpeername4: a backend this socket was translated to is
/// reported as the frontend. Whatever the mode now: a socket translated
/// before a switch keeps its frontend.
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the context the program was called with.
    let sa = unsafe { &mut *ctx.sock_addr };
    let key = SockRevKey {
        // SAFETY: a sock_addr context, which this helper accepts.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        backend_addr: sa.user_ip4.to_ne_bytes(),
        backend_port: u16::from_be(sa.user_port as u16),
        pad: 0,
    };
    if let Some(value) = SOCK_REVERSE.get_ptr(key) {
        // SAFETY: read at once.
        let value = unsafe { *value };
        sa.user_ip4 = u32::from_ne_bytes(value.frontend_addr);
        sa.user_port = u32::from(value.frontend_port.to_be());
        count(outcome::SOCK_REVERSE_TRANSLATED, 0);
    }
    PROCEED
}
