//! Frames as they cross an interface of a harness namespace (an AF_PACKET
//! socket), and checksum verification, so a test can prove that what the
//! datapath wrote on the wire is right instead of trusting receivers (a
//! veth marks what it carries as already verified).
use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use ferry_harness::packet::checksum;

pub struct Capture {
    stop: Arc<AtomicBool>,
    frames: Arc<Mutex<Vec<Vec<u8>>>>,
    thread: Option<JoinHandle<()>>,
}

impl Capture {
    /// Capture every frame seen on `ifname` inside the namespace at `netns`.
    pub fn start(netns: &Path, ifname: &str) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let frames = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let ns = std::fs::File::open(netns)?;
        let ifname = std::ffi::CString::new(ifname)?;
        let (stop2, frames2) = (stop.clone(), frames.clone());
        let thread = std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on an fd we own, for this thread only; then a
            // raw socket we own and close.
            unsafe {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    let _ = ready_tx.send(Err(std::io::Error::last_os_error()));
                    return;
                }
                let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto);
                if fd < 0 {
                    let _ = ready_tx.send(Err(std::io::Error::last_os_error()));
                    return;
                }
                let mut addr: libc::sockaddr_ll = std::mem::zeroed();
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_protocol = proto as u16;
                addr.sll_ifindex = libc::if_nametoindex(ifname.as_ptr()) as i32;
                libc::bind(
                    fd,
                    &addr as *const _ as *const libc::sockaddr,
                    size_of::<libc::sockaddr_ll>() as u32,
                );
                let tv = libc::timeval {
                    tv_sec: 0,
                    tv_usec: 100_000,
                };
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    &tv as *const _ as *const libc::c_void,
                    size_of::<libc::timeval>() as u32,
                );
                let _ = ready_tx.send(Ok(()));
                let mut buf = vec![0u8; 65536];
                while !stop2.load(Ordering::Relaxed) {
                    let n = libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0);
                    if n > 0 {
                        frames2.lock().unwrap().push(buf[..n as usize].to_vec());
                    }
                }
                libc::close(fd);
            }
        });
        ready_rx.recv()??;
        Ok(Self {
            stop,
            frames,
            thread: Some(thread),
        })
    }

    /// Stop and return what was seen.
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.frames.lock().unwrap())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The IPv4/TCP view of a frame: (src, dst, src port, dst port), if it is
/// an untagged IPv4 TCP frame.
pub fn tcp_tuple(frame: &[u8]) -> Option<([u8; 4], [u8; 4], u16, u16)> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] || frame[23] != 6 {
        return None;
    }
    let l4 = 14 + usize::from(frame[14] & 0x0f) * 4;
    let port = |o: usize| Some(u16::from_be_bytes([*frame.get(o)?, *frame.get(o + 1)?]));
    Some((
        frame[26..30].try_into().ok()?,
        frame[30..34].try_into().ok()?,
        port(l4)?,
        port(l4 + 2)?,
    ))
}

/// Whether an IPv4 TCP/UDP frame's IPv4 and L4 checksums verify (None for
/// anything else). A UDP checksum of zero ("none") verifies.
pub fn checksums_ok(frame: &[u8]) -> Option<bool> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    let ip = frame.get(14..14 + ihl)?;
    let l4 = frame.get(14 + ihl..14 + total)?;
    let protocol = frame[23];
    if protocol != 6 && protocol != 17 {
        return None;
    }
    if checksum(ip) != 0 {
        return Some(false);
    }
    if protocol == 17 && l4.get(6..8) == Some(&[0, 0]) {
        return Some(true);
    }
    let mut pseudo = Vec::with_capacity(12 + l4.len());
    pseudo.extend_from_slice(&frame[26..34]);
    pseudo.extend_from_slice(&[0, protocol]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(l4);
    Some(checksum(&pseudo) == 0)
}

/// Put `frame` on the wire of `ifname` inside the namespace at `netns`, as
/// written (an AF_PACKET socket: what a pod with CAP_NET_RAW can send).
pub fn send_frame(netns: &Path, ifname: &str, frame: Vec<u8>) -> anyhow::Result<()> {
    let ifname = std::ffi::CString::new(ifname)?;
    ferry_harness::in_netns(netns, move || -> anyhow::Result<()> {
        // SAFETY: a raw socket we own and close; the address and the frame
        // outlive the calls that read them.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = libc::if_nametoindex(ifname.as_ptr()) as i32;
            let sent = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                &addr as *const _ as *const libc::sockaddr,
                size_of::<libc::sockaddr_ll>() as u32,
            );
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if sent != frame.len() as isize {
                anyhow::bail!("sending a raw frame on {ifname:?}: {err}");
            }
        }
        Ok(())
    })?
}
