//! What the datapath did with a packet: indices of `ferry_counters`.
//!
//! Drops are kept apart by reason so an operator can tell "no endpoints"
//! from "malformed packet" from "conntrack full" without a packet capture.

/// A new or established flow to a Service frontend was translated (DNAT).
pub const TRANSLATED: u32 = 0;
/// A reply from a backend was translated back (source -> frontend).
pub const REVERSE_TRANSLATED: u32 = 1;
/// IPv4 traffic that is neither a Service frontend nor a tracked reply.
pub const PASSED: u32 = 2;
/// Not IPv4 (ARP, IPv6, ...): left to the kernel untouched.
pub const PASSED_NOT_IPV4: u32 = 3;
/// An IPv4 fragment ferry does not translate: one that is no part of a
/// Service flow (passed as it came).
pub const PASSED_FRAGMENT: u32 = 4;
/// A Service frontend with no ready endpoints: answered with ICMP
/// destination-unreachable (port unreachable), as kube-proxy's REJECT does.
pub const REJECTED_NO_ENDPOINTS: u32 = 5;
/// The IPv4 header is invalid or shorter than it claims.
pub const DROP_MALFORMED_IPV4: u32 = 6;
/// The TCP/UDP header is cut short.
pub const DROP_TRUNCATED_L4: u32 = 7;
/// The frontend's backend slot was missing (an update raced the packet).
pub const DROP_NO_BACKEND_SLOT: u32 = 8;
/// A conntrack entry could not be written (map full or error).
pub const DROP_CONNTRACK_WRITE: u32 = 9;
/// Rewriting the packet failed in a kernel helper.
pub const DROP_REWRITE_FAILED: u32 = 10;
/// The reject reply could not be built.
pub const DROP_REJECT_FAILED: u32 = 11;

/// externalTrafficPolicy Local and no ready endpoint on this node: dropped,
/// as kube-proxy does, so the load balancer's health check steers away.
pub const DROP_NO_LOCAL_ENDPOINTS: u32 = 12;

/// An external flow to a backend on another node, translated and sent on
/// in XDP (before the kernel stack).
pub const TRANSLATED_XDP: u32 = 13;
/// The reply of such a flow, translated back and sent in XDP.
pub const REVERSE_TRANSLATED_XDP: u32 = 14;

/// A new external flow to a backend on another node found no source-NAT
/// port free for that backend: every port of the node's range is held by a
/// live flow, or by a closed one still resting or in the backend's
/// TIME_WAIT. Widen `--snat-ports`.
pub const DROP_SNAT_PORTS_EXHAUSTED: u32 = 15;

/// A ClusterIP (`--service-cidr` given) on a port or protocol its Service
/// does not serve, TCP or UDP: answered with ICMP port unreachable, as
/// kube-proxy rejects it, never sent off the node.
pub const REJECTED_UNSERVED_PORT: u32 = 16;
/// An address inside a service CIDR that no Service holds: dropped, as
/// kube-proxy does, never sent off the node.
pub const DROP_UNALLOCATED_SERVICE_IP: u32 = 17;
/// Neither TCP nor UDP (a ping, an ICMP error) to an address inside a
/// service CIDR or a ClusterIP: dropped, never sent off the node.
pub const DROP_SERVICE_IP_OTHER_PROTOCOL: u32 = 18;

/// A new flow to a load-balancer ingress IP from a client outside the
/// Service's `loadBalancerSourceRanges`: dropped (kube-proxy's firewall).
pub const DROP_SOURCE_RANGE: u32 = 19;

/// A later fragment (no L4 header) for the service range (a ClusterIP or
/// an address in a service CIDR) whose datagram has no first fragment
/// recorded: it came before its first fragment, or the first was not
/// translated. Its backend cannot be known, so it is dropped (as Cilium
/// does) and never sent off the node towards the Service address.
pub const DROP_FRAGMENT_UNTRACKED: u32 = 20;

/// An ICMP error (destination unreachable, fragmentation needed included;
/// time exceeded; parameter problem) about a packet of a Service flow,
/// translated back the way that flow's packets are: outer and quoted
/// headers, every checksum. Path-MTU discovery works through Services
/// because of it.
pub const TRANSLATED_ICMP_ERROR: u32 = 21;
/// An ICMP error a pod sent about a Service flow it is not an end of (the
/// quoted packet was not addressed to the pod, or the pod's source address
/// is not its own): dropped, so that no pod can steer errors into another
/// pod's flows.
pub const DROP_ICMP_ERROR_FOREIGN: u32 = 22;

/// A socket's connect() or UDP sendmsg() to a Service frontend was
/// translated to a backend by the socket programs (counted per call, 0
/// bytes): its packets carry the backend address and tc passes them.
pub const SOCK_TRANSLATED: u32 = 23;
/// A socket's connect() or sendmsg() to a frontend without endpoints was
/// refused with ECONNREFUSED.
pub const SOCK_REJECTED_NO_ENDPOINTS: u32 = 24;
/// recvmsg() or getpeername() of a translated socket reported the frontend
/// instead of the backend.
pub const SOCK_REVERSE_TRANSLATED: u32 = 25;
/// A new (socket, backend) entry was written to `ferry_sock_rev`. The
/// agent subtracts the entries present to count evictions.
pub const SOCK_REVERSE_NEW: u32 = 26;
/// The reverse entry could not be written: the connect() or sendmsg()
/// failed with ENOMEM rather than leave the application seeing the backend.
pub const DROP_SOCK_REVERSE_WRITE: u32 = 27;
/// A socket's connect() or sendmsg() refused by the Service's
/// loadBalancerSourceRanges (EPERM), as tc drops such packets.
pub const SOCK_DROP_SOURCE_RANGE: u32 = 28;
/// A frontend the socket programs leave to tc: the drawn slot was missing
/// (an update raced the call), or the frontend needs the client's address
/// (affinity, source ranges) and a pod's socket is not bound yet.
pub const SOCK_PASSED_TO_TC: u32 = 29;
/// Counted by the agent, not the datapath: an entry of `ferry_sock_rev`
/// the agent removed because it terminated the socket (its UDP backend
/// left). Subtracted, with the entries present, from the new entries to
/// count evictions.
pub const SOCK_REVERSE_REMOVED: u32 = 30;
/// A pod sent an IPv4 packet whose source is not its own address (or came
/// in on a veth ferry-cni did not set up): dropped at the pod's veth, so
/// no pod can speak for another's flows.
pub const DROP_SPOOFED_SOURCE: u32 = 31;

/// Number of outcomes.
pub const COUNT: u32 = 32;
/// Slots in `ferry_counters`: more than `COUNT`, so that a release adding
/// outcomes still adopts the pinned map of the one before.
pub const COUNTER_SLOTS: u32 = 64;
const _: () = assert!(COUNT <= COUNTER_SLOTS);

/// Stable names, indexed by outcome, for the CLI and metrics.
pub const NAMES: [&str; COUNT as usize] = [
    "translated",
    "reverse_translated",
    "passed",
    "passed_not_ipv4",
    "passed_fragment",
    "rejected_no_endpoints",
    "drop_malformed_ipv4",
    "drop_truncated_l4",
    "drop_no_backend_slot",
    "drop_conntrack_write",
    "drop_rewrite_failed",
    "drop_reject_failed",
    "drop_no_local_endpoints",
    "translated_xdp",
    "reverse_translated_xdp",
    "drop_snat_ports_exhausted",
    "rejected_unserved_port",
    "drop_unallocated_service_ip",
    "drop_service_ip_other_protocol",
    "drop_source_range",
    "drop_fragment_untracked",
    "translated_icmp_error",
    "drop_icmp_error_foreign",
    "sock_translated",
    "sock_rejected_no_endpoints",
    "sock_reverse_translated",
    "sock_reverse_new",
    "drop_sock_reverse_write",
    "sock_drop_source_range",
    "sock_passed_to_tc",
    "sock_reverse_removed",
    "drop_spoofed_source",
];
