//! The frames of a capture file, for `ferry-agent trace --pcap`: pcap or
//! pcapng as tcpdump and Wireshark write them (pcap-parser), each as an
//! Ethernet frame the hooks can run.
use std::path::Path;

use pcap_parser::{Linktype, PcapBlockOwned, PcapError, pcapng::Block};

/// More frames than anyone reads a trace of; the rest are not traced.
pub const MAX_FRAMES: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum PcapReadError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is no pcap or pcapng file (or is cut short): {detail}")]
    Format { path: String, detail: String },
    #[error(
        "{path}: link type {linktype} is not supported; capture on one interface (`tcpdump -i eth0 -w FILE`), not on `any`, so that frames are Ethernet"
    )]
    Linktype { path: String, linktype: i32 },
}

/// The Ethernet frames of the capture at `path`, at most `MAX_FRAMES`.
/// Raw IPv4 captures get an Ethernet header (zero MACs; the hooks do not
/// look at them).
pub fn frames(path: &Path) -> Result<Vec<Vec<u8>>, PcapReadError> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| PcapReadError::Open {
        path: name.clone(),
        source,
    })?;
    let format = |detail: String| PcapReadError::Format {
        path: name.clone(),
        detail,
    };
    let mut reader =
        pcap_parser::create_reader(1 << 16, file).map_err(|e| format(e.to_string()))?;
    // pcap: one link type; pcapng: one per interface, by interface id.
    let mut linktypes: Vec<Linktype> = Vec::new();
    let mut out = Vec::new();
    while out.len() < MAX_FRAMES {
        match reader.next() {
            Ok((offset, block)) => {
                let frame = match block {
                    PcapBlockOwned::LegacyHeader(header) => {
                        linktypes = vec![header.network];
                        None
                    }
                    PcapBlockOwned::Legacy(b) => Some((0, b.data.to_vec())),
                    PcapBlockOwned::NG(Block::SectionHeader(_)) => {
                        linktypes.clear();
                        None
                    }
                    PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                        linktypes.push(idb.linktype);
                        None
                    }
                    PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                        Some((epb.if_id as usize, epb.data.to_vec()))
                    }
                    PcapBlockOwned::NG(Block::SimplePacket(spb)) => Some((0, spb.data.to_vec())),
                    PcapBlockOwned::NG(_) => None,
                };
                reader.consume(offset);
                if let Some((interface, data)) = frame {
                    let linktype = linktypes.get(interface).copied().unwrap_or(Linktype(-1));
                    out.push(as_ethernet(linktype, data).ok_or(PcapReadError::Linktype {
                        path: name.clone(),
                        linktype: linktype.0,
                    })?);
                }
            }
            Err(PcapError::Eof) => break,
            Err(PcapError::Incomplete(_)) => reader.refill().map_err(|e| format(e.to_string()))?,
            Err(e) => return Err(format(e.to_string())),
        }
    }
    Ok(out)
}

/// `data` of link type `linktype` as an Ethernet frame.
fn as_ethernet(linktype: Linktype, data: Vec<u8>) -> Option<Vec<u8>> {
    match linktype {
        Linktype::ETHERNET => Some(data),
        Linktype::RAW | Linktype::IPV4 => {
            let mut frame = vec![0u8; 12];
            frame.extend_from_slice(&[0x08, 0x00]);
            frame.extend(data);
            Some(frame)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic pcap file of `frames` with link type `linktype`.
    fn pcap_file(linktype: u32, frames: &[&[u8]]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        f.extend_from_slice(&2u16.to_le_bytes());
        f.extend_from_slice(&4u16.to_le_bytes());
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&65535u32.to_le_bytes());
        f.extend_from_slice(&linktype.to_le_bytes());
        for (i, frame) in frames.iter().enumerate() {
            f.extend_from_slice(&(i as u32).to_le_bytes());
            f.extend_from_slice(&0u32.to_le_bytes());
            f.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            f.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            f.extend_from_slice(frame);
        }
        f
    }

    fn written(bytes: &[u8]) -> tempfile_path::TempPath {
        tempfile_path::TempPath::with(bytes)
    }

    /// A file of the test's own, removed when dropped.
    mod tempfile_path {
        use std::path::PathBuf;

        pub struct TempPath(pub PathBuf);

        impl TempPath {
            pub fn with(bytes: &[u8]) -> Self {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let path = std::env::temp_dir()
                    .join(format!("ferry-pcap-test-{}-{n}", std::process::id()));
                std::fs::write(&path, bytes).unwrap();
                Self(path)
            }
        }

        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn ethernet_frames_are_read_in_order() {
        let a: &[u8] = &[1; 60];
        let b: &[u8] = &[2; 74];
        let file = written(&pcap_file(1, &[a, b]));
        assert_eq!(frames(&file.0).unwrap(), vec![a.to_vec(), b.to_vec()]);
    }

    #[test]
    fn raw_ipv4_gets_an_ethernet_header() {
        let ip: &[u8] = &[
            0x45, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let file = written(&pcap_file(101, &[ip]));
        let got = frames(&file.0).unwrap();
        assert_eq!(got[0][12..14], [0x08, 0x00]);
        assert_eq!(&got[0][14..], ip);
    }

    #[test]
    fn cooked_captures_and_garbage_are_refused_clearly() {
        let file = written(&pcap_file(113, &[&[0; 40]]));
        let err = frames(&file.0).unwrap_err().to_string();
        assert!(
            err.contains("link type 113") && err.contains("tcpdump -i eth0"),
            "{err}"
        );
        let file = written(b"this is not a capture file at all, no");
        assert!(matches!(frames(&file.0), Err(PcapReadError::Format { .. })));
    }
}
