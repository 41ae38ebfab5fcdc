//! Links, addresses, routes and neighbours through route netlink, with the
//! rust-netlink project's `rtnetlink`: ferry-cni's hands in the node's and
//! the pod's namespaces, and the agent's for its kernel routes and VXLAN
//! device. Nothing is run as a child process, so neither iproute2 nor
//! util-linux is needed on the node, and errors are told apart by errno,
//! not by the text a tool printed.
//!
//! rtnetlink is async and its callers are not: ferry-cni is a short-lived
//! sync program, and the agent's reconciler is sync code running on a
//! tokio worker, where a nested `block_on` panics. So [`run`] carries out
//! each batch of requests on a thread of its own with a current-thread
//! runtime.
//!
//! A network namespace belongs to a thread, and a netlink socket stays in
//! the namespace it was made in: [`connect_in`] makes the socket for a
//! pod's namespace on a short-lived thread that enters it and ends, so no
//! thread that goes on working ever changes namespace.
use std::{
    fs::File,
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsRawFd, FromRawFd, IntoRawFd},
    path::{Path, PathBuf},
};

use futures::TryStreamExt;
use netlink_packet_route::{
    AddressFamily,
    address::AddressAttribute,
    link::{InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkMessage},
    neighbour::NeighbourState,
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteIpTunnel, RouteMessage, RouteProtocol,
        RouteScope, RouteType,
    },
};
use netlink_sys::{Socket, TokioSocket, protocols::NETLINK_ROUTE};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use crate::net::Ipv4Net;

#[derive(Debug, thiserror::Error)]
pub enum RtnlError {
    /// The kernel refused a request; `errno` says why.
    #[error("{what}: {}{}", io::Error::from_raw_os_error(*errno), advice(*errno))]
    Refused { what: String, errno: i32 },
    #[error(
        "{what}: the kernel's answer was not understood ({detail}); this is a bug in ferry, please report it"
    )]
    Answer { what: String, detail: String },
    #[error(
        "cannot open a route netlink socket: {0}; is this process out of file descriptors, or confined by a seccomp profile that forbids netlink?"
    )]
    Socket(io::Error),
    #[error(
        "cannot open the network namespace {path}: {source}; check that the path names the pod's namespace and that it still exists"
    )]
    OpenNetns { path: PathBuf, source: io::Error },
    #[error(
        "cannot enter the network namespace {path}: {source}; entering a namespace needs CAP_SYS_ADMIN"
    )]
    EnterNetns { path: PathBuf, source: io::Error },
    #[error("cannot start the thread or runtime that talks netlink: {0}")]
    Runtime(io::Error),
    #[error("the thread that talks netlink panicked")]
    Panicked,
}

/// What to do about a refusal, where the errno alone says it.
fn advice(errno: i32) -> &'static str {
    match errno {
        libc::EPERM | libc::EACCES => "; this needs CAP_NET_ADMIN",
        libc::EEXIST => "; something else already made it: remove it first",
        libc::ENODEV => "; no interface of that name exists",
        libc::EOPNOTSUPP | libc::EAFNOSUPPORT => {
            "; the kernel lacks the feature (veth, vxlan, lightweight tunnels: CONFIG_LWTUNNEL)"
        }
        _ => "",
    }
}

impl RtnlError {
    /// The errno of a refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            RtnlError::Refused { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// The object is already gone, so deleting it again is done: a link
    /// answers ENODEV, a route ESRCH, a neighbour ENOENT.
    pub fn is_missing(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENODEV | libc::ESRCH | libc::ENOENT)
        )
    }

    /// The object exists already (EEXIST).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }
}

/// Turns rtnetlink's error for the request `what` into ours.
fn refused(what: impl FnOnce() -> String) -> impl FnOnce(rtnetlink::Error) -> RtnlError {
    move |e| match e {
        rtnetlink::Error::NetlinkError(m) => RtnlError::Refused {
            what: what(),
            errno: m.raw_code().abs(),
        },
        other => RtnlError::Answer {
            what: what(),
            detail: other.to_string(),
        },
    }
}

/// Carries out `work` with a handle on the calling namespace's route
/// netlink, on a thread and runtime of its own (see the module's doc), and
/// waits for it.
pub fn run<T, F, Fut>(work: F) -> Result<T, RtnlError>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T, RtnlError>>,
{
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("ferry-netlink".into())
            .spawn_scoped(scope, || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                    .map_err(RtnlError::Runtime)?;
                runtime.block_on(async {
                    let (connection, handle, _) =
                        rtnetlink::new_connection().map_err(RtnlError::Socket)?;
                    tokio::spawn(connection);
                    work(handle).await
                })
            })
            .map_err(RtnlError::Runtime)?;
        thread.join().map_err(|_| RtnlError::Panicked)?
    })
}

/// The network namespace at `path`, opened.
pub fn open_netns(path: &Path) -> Result<File, RtnlError> {
    File::open(path).map_err(|source| RtnlError::OpenNetns {
        path: path.to_path_buf(),
        source,
    })
}

/// A handle on the route netlink of the namespace `netns` (opened from
/// `path`), for use inside [`run`].
pub fn connect_in(netns: &File, path: &Path) -> Result<Handle, RtnlError> {
    let socket = std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("ferry-netns".into())
            .spawn_scoped(scope, || {
                crate::cni::podns::enter(netns).map_err(|source| RtnlError::EnterNetns {
                    path: path.to_path_buf(),
                    source,
                })?;
                Socket::new(NETLINK_ROUTE).map_err(RtnlError::Socket)
            })
            .map_err(RtnlError::Runtime)?;
        thread.join().map_err(|_| RtnlError::Panicked)?
    })?;
    // SAFETY: the descriptor is the socket's own, handed over whole (the
    // Socket gives it up and is gone).
    let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
    let (connection, handle, _) = rtnetlink::from_socket(socket);
    tokio::spawn(connection);
    Ok(handle)
}

/// An interface's index and MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub mac: [u8; 6],
}

fn link_of(message: &LinkMessage) -> Option<Link> {
    let mac = message.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok(),
        _ => None,
    })?;
    Some(Link {
        index: message.header.index,
        mac,
    })
}

/// The interface `name`, or None if there is none.
pub async fn find_link(handle: &Handle, name: &str) -> Result<Option<Link>, RtnlError> {
    match link(handle, name).await {
        Ok(link) => Ok(Some(link)),
        Err(e) if e.is_missing() => Ok(None),
        Err(e) => Err(e),
    }
}

/// The interface `name`; ENODEV if there is none.
pub async fn link(handle: &Handle, name: &str) -> Result<Link, RtnlError> {
    let what = || format!("reading the interface {name}");
    let message = handle
        .link()
        .get()
        .match_name(name)
        .execute()
        .try_next()
        .await
        .map_err(refused(what))?
        .ok_or_else(|| RtnlError::Refused {
            what: what(),
            errno: libc::ENODEV,
        })?;
    link_of(&message).ok_or_else(|| RtnlError::Answer {
        what: what(),
        detail: "the interface has no Ethernet address".into(),
    })
}

/// The index of the interface `name` (ENODEV if there is none), for a
/// next hop.
pub async fn index(handle: &Handle, name: &str) -> Result<u32, RtnlError> {
    let what = || format!("reading the interface {name}");
    let message = handle
        .link()
        .get()
        .match_name(name)
        .execute()
        .try_next()
        .await
        .map_err(refused(what))?;
    message
        .map(|m| m.header.index)
        .ok_or_else(|| RtnlError::Refused {
            what: what(),
            errno: libc::ENODEV,
        })
}

/// Delete the interface `name`; false if there was none.
pub async fn delete_link(handle: &Handle, name: &str) -> Result<bool, RtnlError> {
    let message = LinkUnspec::new_with_name(name).build();
    match handle
        .link()
        .del_with_message(message)
        .execute()
        .await
        .map_err(refused(|| format!("deleting the interface {name}")))
    {
        Ok(()) => Ok(true),
        Err(e) if e.is_missing() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Bring the interface `name` up.
pub async fn set_up(handle: &Handle, name: &str) -> Result<(), RtnlError> {
    handle
        .link()
        .set(LinkUnspec::new_with_name(name).up().build())
        .execute()
        .await
        .map_err(refused(|| format!("bringing the interface {name} up")))
}

/// A veth pair, `host` here and `peer` made directly inside the namespace
/// `peer_netns`, both with `mtu`: the peer never appears in this
/// namespace, so its name cannot clash with an interface here.
pub async fn add_veth(
    handle: &Handle,
    host: &str,
    peer: &str,
    mtu: u32,
    peer_netns: &File,
) -> Result<(), RtnlError> {
    let peer_message = LinkUnspec::new_with_name(peer)
        .mtu(mtu)
        .setns_by_fd(peer_netns.as_raw_fd())
        .build();
    let message = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
        .name(host)
        .mtu(mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_message)))
        .build();
    handle
        .link()
        .add(message)
        .execute()
        .await
        .map_err(refused(|| format!("adding the veth pair {host} / {peer}")))
}

/// A collect-metadata VXLAN device on UDP port `port`, without learning
/// (what `ip link add NAME type vxlan external dstport PORT` makes).
pub async fn add_vxlan(handle: &Handle, name: &str, port: u16) -> Result<(), RtnlError> {
    let message = LinkMessageBuilder::<LinkVxlan>::new(name)
        .append_info_data(InfoVxlan::CollectMetadata(true))
        .append_info_data(InfoVxlan::Learning(false))
        .port(port)
        .build();
    handle
        .link()
        .add(message)
        .execute()
        .await
        .map_err(refused(|| format!("adding the VXLAN device {name}")))
}

/// ARP off and the interface up.
pub async fn set_noarp_up(handle: &Handle, name: &str) -> Result<(), RtnlError> {
    handle
        .link()
        .set(LinkUnspec::new_with_name(name).arp(false).up().build())
        .execute()
        .await
        .map_err(refused(|| format!("setting ARP off and {name} up")))
}

/// `addr/32` on the interface `index`.
pub async fn add_host_address(
    handle: &Handle,
    index: u32,
    addr: Ipv4Addr,
    ifname: &str,
) -> Result<(), RtnlError> {
    handle
        .address()
        .add(index, IpAddr::V4(addr), 32)
        .execute()
        .await
        .map_err(refused(|| format!("adding {addr}/32 to {ifname}")))
}

/// The IPv4 addresses of the interface `index`.
pub async fn ipv4_addresses(handle: &Handle, index: u32) -> Result<Vec<Ipv4Addr>, RtnlError> {
    let messages: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(refused(|| {
            format!("listing the addresses of interface {index}")
        }))?;
    Ok(messages
        .iter()
        .filter(|m| m.header.family == AddressFamily::Inet)
        .flat_map(|m| &m.attributes)
        .filter_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        })
        .collect())
}

/// A permanent neighbour entry: `addr` is at `mac` on the interface
/// `index`, replacing any entry there was.
pub async fn replace_permanent_neighbour(
    handle: &Handle,
    index: u32,
    addr: Ipv4Addr,
    mac: [u8; 6],
) -> Result<(), RtnlError> {
    handle
        .neighbours()
        .add(index, IpAddr::V4(addr))
        .link_layer_address(&mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(refused(|| {
            format!("adding the neighbour entry {addr} on interface {index}")
        }))
}

/// A main-table IPv4 route as `ip route` makes one (protocol `boot`).
fn route(dst: Ipv4Net) -> RouteMessageBuilder<Ipv4Addr> {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst.network(), dst.prefix)
        .protocol(RouteProtocol::Boot)
}

/// How a route leaves.
#[derive(Debug, Clone, Copy)]
pub enum NextHop {
    /// Straight out of the interface, on-link (`scope link`).
    Link(u32),
    /// Through the gateway, out of the interface.
    Via(Ipv4Addr, u32),
    /// Out of a collect-metadata VXLAN device, encapsulated towards
    /// `remote` with the VNI (`encap ip id VNI dst REMOTE`), on-link.
    Vxlan {
        vni: u32,
        remote: Ipv4Addr,
        device: u32,
    },
}

fn route_message(dst: Ipv4Net, hop: NextHop) -> RouteMessage {
    match hop {
        NextHop::Link(index) => route(dst)
            .output_interface(index)
            .scope(RouteScope::Link)
            .build(),
        NextHop::Via(gateway, index) => route(dst).gateway(gateway).output_interface(index).build(),
        NextHop::Vxlan {
            vni,
            remote,
            device,
        } => route(dst)
            .encap_ip(vec![
                RouteIpTunnel::Id(u64::from(vni)),
                RouteIpTunnel::Destination(remote),
            ])
            .output_interface(device)
            // No gateway, so on-link, as `ip route` scopes such a route.
            .scope(RouteScope::Link)
            .build(),
    }
}

/// Add the route (EEXIST if there is one to `dst`).
pub async fn add_route(handle: &Handle, dst: Ipv4Net, hop: NextHop) -> Result<(), RtnlError> {
    handle
        .route()
        .add(route_message(dst, hop))
        .execute()
        .await
        .map_err(refused(|| format!("adding the route to {dst} ({hop:?})")))
}

/// Add the route, or replace the one there is to `dst`.
pub async fn replace_route(handle: &Handle, dst: Ipv4Net, hop: NextHop) -> Result<(), RtnlError> {
    handle
        .route()
        .add(route_message(dst, hop))
        .replace()
        .execute()
        .await
        .map_err(refused(|| {
            format!("replacing the route to {dst} ({hop:?})")
        }))
}

/// The default route of the main table through `gateway` out of `index`.
pub async fn add_default_route(
    handle: &Handle,
    gateway: Ipv4Addr,
    index: u32,
) -> Result<(), RtnlError> {
    let message = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .output_interface(index)
        .protocol(RouteProtocol::Boot)
        .build();
    handle
        .route()
        .add(message)
        .execute()
        .await
        .map_err(refused(|| {
            format!("adding the default route via {gateway}")
        }))
}

/// Delete the main-table route to `dst`, whatever its protocol, scope and
/// next hop; false if there was none.
pub async fn delete_route(handle: &Handle, dst: Ipv4Net) -> Result<bool, RtnlError> {
    match handle
        .route()
        .del(delete_message(dst))
        .execute()
        .await
        .map_err(refused(|| format!("deleting the route to {dst}")))
    {
        Ok(()) => Ok(true),
        Err(e) if e.is_missing() => Ok(false),
        Err(e) => Err(e),
    }
}

fn delete_message(dst: Ipv4Net) -> RouteMessage {
    let mut message = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst.network(), dst.prefix)
        .build();
    // The kernel compares each of these that is set: unset, they match the
    // route whatever made it (`ip route del` sends the same).
    message.header.protocol = RouteProtocol::Unspec;
    message.header.scope = RouteScope::NoWhere;
    message.header.kind = RouteType::Unspec;
    message
}

/// The destinations of the main table's IPv4 routes.
pub async fn main_table_ipv4_destinations(
    handle: &Handle,
) -> Result<std::collections::BTreeSet<Ipv4Net>, RtnlError> {
    let routes: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(refused(|| "listing the IPv4 routes".to_string()))?;
    Ok(routes
        .iter()
        .filter(|r| table_of(r) == u32::from(RouteHeader::RT_TABLE_MAIN))
        .map(|r| {
            let addr = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(*a),
                    _ => None,
                })
                .unwrap_or(Ipv4Addr::UNSPECIFIED);
            Ipv4Net {
                addr,
                prefix: r.header.destination_prefix_length,
            }
        })
        .collect())
}

/// A route's table: the attribute when there is one (tables above 255
/// have only that), else the header's.
fn table_of(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_told_apart_by_errno() {
        let e = |errno| RtnlError::Refused {
            what: "x".into(),
            errno,
        };
        for missing in [libc::ENODEV, libc::ESRCH, libc::ENOENT] {
            assert!(e(missing).is_missing(), "{missing}");
        }
        assert!(!e(libc::EEXIST).is_missing());
        assert!(e(libc::EEXIST).is_exists());
        assert!(!RtnlError::Panicked.is_missing());
        let text = e(libc::EPERM).to_string();
        assert!(text.starts_with("x: Operation not permitted"), "{text}");
        assert!(text.contains("CAP_NET_ADMIN"), "{text}");
    }

    #[test]
    fn routes_are_made_as_ip_makes_them_and_deleted_whatever_made_them() {
        let net: Ipv4Net = "10.244.2.0/24".parse().unwrap();
        let message = route_message(net, NextHop::Link(7));
        assert_eq!(message.header.protocol, RouteProtocol::Boot);
        assert_eq!(message.header.scope, RouteScope::Link);
        assert_eq!(message.header.table, RouteHeader::RT_TABLE_MAIN);
        assert_eq!(message.header.destination_prefix_length, 24);
        let delete = delete_message(net);
        assert_eq!(delete.header.protocol, RouteProtocol::Unspec);
        assert_eq!(delete.header.scope, RouteScope::NoWhere);
        assert_eq!(delete.header.kind, RouteType::Unspec);
        assert_eq!(delete.header.table, RouteHeader::RT_TABLE_MAIN);
        assert_eq!(delete.header.destination_prefix_length, 24);
    }

    #[test]
    fn a_vxlan_route_carries_the_vni_and_the_remote() {
        let net: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        let message = route_message(
            net,
            NextHop::Vxlan {
                vni: 42,
                remote: Ipv4Addr::new(192, 168, 77, 13),
                device: 9,
            },
        );
        assert!(message.attributes.contains(&RouteAttribute::Encap(vec![
            netlink_packet_route::route::RouteLwTunnelEncap::Ip(RouteIpTunnel::Id(42)),
            netlink_packet_route::route::RouteLwTunnelEncap::Ip(RouteIpTunnel::Destination(
                Ipv4Addr::new(192, 168, 77, 13)
            )),
        ])));
        assert!(message.attributes.contains(&RouteAttribute::Oif(9)));
        assert_eq!(message.header.scope, RouteScope::Link);
    }
}
