//! IPv4 address ranges written as CIDRs: the service range, the cluster's pod range and
//! each node's share of it.

use std::net::Ipv4Addr;

/// An IPv4 range such as 10.42.0.0/16, its base address masked to the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, prefix) = s.split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR like 10.42.0.0/16"))?;
        let base: Ipv4Addr = ip.parse().map_err(|e| format!("{ip:?}: {e}"))?;
        let prefix: u8 = prefix.parse().map_err(|e| format!("{prefix:?}: {e}"))?;
        if !(8..=30).contains(&prefix) {
            return Err(format!("prefix /{prefix} must be between /8 and /30"));
        }
        Ok(Cidr { base: Ipv4Addr::from(u32::from(base) & mask(prefix)), prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX << (32 - u32::from(prefix))
}

impl Cidr {
    /// How many addresses the range holds.
    pub fn size(&self) -> u32 {
        1 << (32 - u32::from(self.prefix))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.base)
    }

    /// The address at `offset` into the range.
    pub fn nth(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + offset)
    }

    /// In a service range, the cluster DNS's address (the `kube-dns` Service's ClusterIP):
    /// its tenth, as in k3s. The API server reserves it and every node serves DNS there.
    pub fn dns_address(&self) -> Ipv4Addr {
        self.nth(10)
    }

    /// How many ranges of prefix `sub` the range splits into (0 if `sub` is shorter).
    pub fn subnet_count(&self, sub: u8) -> u32 {
        if sub < self.prefix || sub > 32 { 0 } else { 1u32.checked_shl(u32::from(sub - self.prefix)).unwrap_or(u32::MAX) }
    }

    /// The `index`th range of prefix `sub` inside this one.
    pub fn subnet(&self, sub: u8, index: u32) -> Option<Cidr> {
        (index < self.subnet_count(sub)).then(|| Cidr { base: Ipv4Addr::from(u32::from(self.base) + (index << (32 - u32::from(sub)))), prefix: sub })
    }

    /// `other`'s index among this range's subranges of `other`'s prefix (what
    /// [`Cidr::subnet`] takes back), if `other` lies inside this range.
    pub fn subnet_index(&self, other: &Cidr) -> Option<u32> {
        (other.prefix >= self.prefix && self.contains(other.base)).then(|| (u32::from(other.base) - u32::from(self.base)) >> (32 - u32::from(other.prefix)))
    }

    /// Whether the two ranges share an address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.base) || other.contains(self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_splits() {
        let c: Cidr = "10.42.7.9/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.42.0.0/16");
        assert_eq!(c.size(), 65536);
        assert_eq!(c.subnet_count(24), 256);
        assert_eq!(c.subnet(24, 3).unwrap().to_string(), "10.42.3.0/24");
        assert_eq!(c.subnet(24, 256), None);
        assert_eq!(c.subnet_index(&"10.42.3.0/24".parse().unwrap()), Some(3));
        assert_eq!(c.subnet_index(&"10.43.3.0/24".parse().unwrap()), None);
        assert!(c.overlaps(&"10.0.0.0/8".parse().unwrap()));
        assert!(!c.overlaps(&"10.43.0.0/16".parse().unwrap()));
        for bad in ["10.42.0.0", "10.42.0.0/33", "10.42.0/16", "x/16", "10.42.0.0/4"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}
