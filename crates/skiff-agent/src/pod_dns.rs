//! Names as a pod resolves them: through the cluster DNS, with the search list a pod's
//! resolv.conf has in Kubernetes (`NS.svc.DOMAIN svc.DOMAIN DOMAIN`, `ndots:5`), so a
//! function's outgoing request to `web`, `web.shop` or `web.shop.svc` reaches the Service.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

/// How long the cluster DNS gets to answer one question.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Names with fewer dots than this try the search list first (Kubernetes' ndots).
const NDOTS: usize = 5;

/// The cluster DNS server and the cluster's domain.
#[derive(Debug, Clone)]
pub struct ClusterDns {
    pub server: IpAddr,
    pub domain: String,
}

/// One pod's resolver.
#[derive(Debug, Clone)]
pub struct PodResolver {
    server: SocketAddr,
    search: Vec<String>,
}

impl PodResolver {
    pub fn new(dns: &ClusterDns, namespace: &str) -> PodResolver {
        let d = &dns.domain;
        PodResolver { server: SocketAddr::new(dns.server, 53), search: vec![format!("{namespace}.svc.{d}"), format!("svc.{d}"), d.clone()] }
    }

    /// The names to ask for, in order, as glibc's resolver tries them.
    pub fn candidates(&self, name: &str) -> Vec<String> {
        if let Some(absolute) = name.strip_suffix('.') {
            return vec![absolute.to_string()];
        }
        let searched = self.search.iter().map(|s| format!("{name}.{s}"));
        if name.matches('.').count() >= NDOTS { std::iter::once(name.to_string()).chain(searched).collect() } else { searched.chain(std::iter::once(name.to_string())).collect() }
    }

    /// The first address the cluster DNS gives for `name`; None when it knows none (the
    /// caller then resolves as the host does).
    pub async fn resolve(&self, name: &str) -> Option<IpAddr> {
        if name.parse::<IpAddr>().is_ok() {
            return None;
        }
        for candidate in self.candidates(name) {
            match self.ask(&candidate).await {
                Ok(Some(ip)) => return Some(ip),
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(name = %candidate, error = %e, "cluster DNS did not answer");
                    return None;
                }
            }
        }
        None
    }

    /// One A question; Ok(None) when the name has no address.
    async fn ask(&self, name: &str) -> Result<Option<IpAddr>, String> {
        let fqdn = Name::from_ascii(format!("{name}.")).map_err(|e| e.to_string())?;
        let mut query = Message::new(rand_id(), MessageType::Query, OpCode::Query);
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(fqdn, RecordType::A));
        let bytes = query.to_vec().map_err(|e| e.to_string())?;
        let socket = tokio::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0)).await.map_err(|e| e.to_string())?;
        socket.connect(self.server).await.map_err(|e| e.to_string())?;
        socket.send(&bytes).await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(TIMEOUT, socket.recv(&mut buf)).await.map_err(|_| "timed out".to_string())?.map_err(|e| e.to_string())?;
        let answer = Message::from_vec(&buf[..n]).map_err(|e| e.to_string())?;
        if answer.metadata.id != query.metadata.id {
            return Err("answer to another question".into());
        }
        if answer.metadata.response_code != ResponseCode::NoError {
            return Ok(None);
        }
        Ok(answer.answers.iter().find_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        }))
    }
}

fn rand_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0));
    h.finish() as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_list_comes_first_for_short_names() {
        let r = PodResolver::new(&ClusterDns { server: "10.43.0.10".parse().unwrap(), domain: "cluster.local".into() }, "shop");
        assert_eq!(r.candidates("web"), ["web.shop.svc.cluster.local", "web.svc.cluster.local", "web.cluster.local", "web"]);
        assert_eq!(r.candidates("web.other.svc.cluster.local.")[0], "web.other.svc.cluster.local");
        assert_eq!(r.candidates("a.b.c.d.e.f")[0], "a.b.c.d.e.f");
    }
}
