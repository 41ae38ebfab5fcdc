//! IPv4 prefixes and MAC addresses as configuration and tools spell them.
use std::{fmt, net::Ipv4Addr, str::FromStr};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{input:?} is not an IPv4 prefix like 10.244.1.0/24: {reason}")]
pub struct NetParseError {
    pub input: String,
    pub reason: &'static str,
}

impl Ipv4Net {
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) | !self.mask())
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }
}

impl FromStr for Ipv4Net {
    type Err = NetParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| NetParseError {
            input: s.to_string(),
            reason,
        };
        let (addr, prefix) = s.split_once('/').ok_or_else(|| err("missing /prefix"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| err("bad address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| err("bad prefix length"))?;
        if prefix > 32 {
            return Err(err("prefix length above 32"));
        }
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let n: Ipv4Net = "10.244.1.7/24".parse().unwrap();
        assert_eq!(n.network(), Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(n.broadcast(), Ipv4Addr::new(10, 244, 1, 255));
        assert!(n.contains(Ipv4Addr::new(10, 244, 1, 200)));
        assert!(!n.contains(Ipv4Addr::new(10, 244, 2, 1)));
        assert!("10.244.1.0".parse::<Ipv4Net>().is_err());
        assert!("10.244.1.0/33".parse::<Ipv4Net>().is_err());
        let all: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(1, 2, 3, 4)));
    }

    #[test]
    fn macs() {
        let m = [0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f];
        assert_eq!(format_mac(&m), "0a:1b:2c:3d:4e:5f");
    }
}
