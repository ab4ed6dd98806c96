//! The proxy's data path: a listener per frontend that hands each TCP connection or UDP
//! flow to one of its Service's endpoints, round robin, or to the endpoint a client
//! last used under `sessionAffinity: ClientIP`. A TCP endpoint that refuses the
//! connection is skipped for the next one, so an endpoint that just went away costs the
//! client nothing; with no endpoints at all, the connection is reset, as kube-proxy's
//! REJECT rule does, unless the activator holds it for a workload scaling from zero.
//! The HTTP/1.1 requests a TCP connection carries are counted per endpoint, for the
//! request metrics of pods that do not count their own (container pods).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use skiff_core::request_counts::RequestCounts;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::activator::{Activator, NotHeld};
use crate::request_heads::RequestHeads;
use crate::services::Backends;

/// How long to wait for an endpoint to accept before trying the next.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Endpoints tried per connection (and per ingress request).
pub(crate) const ATTEMPTS: usize = 3;
/// A UDP flow with no traffic for this long is forgotten (conntrack's UDP timeout).
const UDP_IDLE: Duration = Duration::from_secs(30);

/// A frontend's current endpoints, shared by its listener and the sync loop.
pub struct Route {
    backends: RwLock<Arc<Backends>>,
    next: AtomicUsize,
    sticky: Mutex<HashMap<IpAddr, (SocketAddr, Instant)>>,
    /// Whether there is any endpoint: held connections wait for it.
    serving: tokio::sync::watch::Sender<bool>,
}

impl Route {
    pub fn new(backends: Backends) -> Arc<Route> {
        let serving = tokio::sync::watch::Sender::new(!backends.endpoints.is_empty());
        Arc::new(Route { backends: RwLock::new(Arc::new(backends)), next: AtomicUsize::new(0), sticky: Mutex::default(), serving })
    }

    /// Takes new endpoints; connections already made stay where they are.
    pub fn update(&self, backends: Backends) {
        if **self.backends.read().unwrap() != backends {
            self.serving.send_replace(!backends.endpoints.is_empty());
            *self.backends.write().unwrap() = Arc::new(backends);
        }
    }

    pub fn backends(&self) -> Arc<Backends> {
        self.backends.read().unwrap().clone()
    }

    /// The endpoints to try for `client`, in order: its sticky endpoint (if it still is
    /// one and has not timed out), then the next ones round robin.
    pub fn candidates(&self, client: IpAddr) -> Vec<SocketAddr> {
        let b = self.backends();
        let n = b.endpoints.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut out: Vec<SocketAddr> = (0..n.min(ATTEMPTS)).map(|i| b.endpoints[(start + i) % n]).collect();
        if let Some(timeout) = b.affinity {
            let sticky = self.sticky.lock().unwrap().get(&client).copied();
            if let Some((ep, at)) = sticky
                && at.elapsed() < timeout
                && b.endpoints.contains(&ep)
            {
                out.retain(|e| *e != ep);
                out.insert(0, ep);
            }
        }
        out
    }

    /// Records that `client` reached `endpoint` (for session affinity).
    pub fn used(&self, client: IpAddr, endpoint: SocketAddr) {
        if self.backends().affinity.is_some() {
            let mut sticky = self.sticky.lock().unwrap();
            if sticky.len() > 100_000 {
                sticky.clear(); // A bound on memory; affinity is best effort past it.
            }
            sticky.insert(client, (endpoint, Instant::now()));
        }
    }
}

/// The next connection on `listener`, with Nagle off. Accept errors (out of file
/// descriptors and the like) are logged and waited out rather than spun on.
pub(crate) async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return (stream, peer);
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A TCP connection to `endpoint`, with Nagle off, or why there is none.
pub(crate) async fn dial(endpoint: SocketAddr) -> Result<TcpStream, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(format!("connecting to {endpoint}: {e}")),
        Err(_) => Err(format!("connecting to {endpoint}: timed out")),
    }
}

/// Accepts connections on `listener` for as long as the task lives.
pub async fn serve_tcp(listener: TcpListener, route: Arc<Route>, activator: Option<Arc<Activator>>, counts: Arc<RequestCounts>) {
    loop {
        let (client, peer) = accept(&listener).await;
        let (route, activator, counts) = (route.clone(), activator.clone(), counts.clone());
        tokio::spawn(async move {
            let mut client = client;
            let mut upstream = connect(&route, peer.ip()).await;
            // No endpoint, or none that still answers (the last pod of a workload scaled
            // to zero just went): the activator may hold the connection.
            if upstream.is_none()
                && let Some(activator) = activator
            {
                match hold(&route, &activator, peer.ip()).await {
                    Ok(connected) => upstream = Some(connected),
                    Err(Some(why)) => {
                        let _ = client.write_all(service_unavailable(&why).as_bytes()).await;
                        return;
                    }
                    Err(None) => {}
                }
            }
            if let Some((upstream, endpoint)) = upstream {
                route.used(peer.ip(), endpoint);
                let relayed = crate::metrics::Relayed::start(&route.backends().service);
                let _ = relay_counting(client, upstream, endpoint.ip(), &counts, &relayed).await;
            } else {
                // Reset, so the client learns at once that nothing serves here.
                let _ = client.set_zero_linger();
            }
        });
    }
}

/// Copies bytes both ways until both sides are done (each side's end passed on to the
/// other as a half close, as `copy_bidirectional` does) or either fails, counting the
/// requests the client sends. A request is in flight from its head until the endpoint's
/// next bytes: the start of its response, as HTTP/1.1 answers in order. (A client that
/// pipelines has its later requests' time cut short; few do.)
async fn relay_counting(mut client: TcpStream, mut upstream: TcpStream, endpoint: IpAddr, counts: &RequestCounts, relayed: &crate::metrics::Relayed) -> std::io::Result<()> {
    let (mut from_client, mut to_client) = client.split();
    let (mut from_upstream, mut to_upstream) = upstream.split();
    let waiting = Mutex::new(std::collections::VecDeque::new());
    let requests = async {
        let (mut heads, mut buf) = (RequestHeads::default(), vec![0u8; RELAY_BUFFER]);
        loop {
            let n = from_client.read(&mut buf).await?;
            if n == 0 {
                return to_upstream.shutdown().await;
            }
            if !heads.opaque() {
                let began = heads.feed(&buf[..n]);
                waiting.lock().unwrap().extend((0..began).map(|_| counts.start(endpoint)));
            }
            to_upstream.write_all(&buf[..n]).await?;
            relayed.to_endpoint.inc_by(n as u64);
        }
    };
    let responses = async {
        let mut buf = vec![0u8; RELAY_BUFFER];
        loop {
            let n = from_upstream.read(&mut buf).await?;
            if n == 0 {
                return to_client.shutdown().await;
            }
            drop(waiting.lock().unwrap().pop_front());
            to_client.write_all(&buf[..n]).await?;
            relayed.to_client.inc_by(n as u64);
        }
    };
    tokio::try_join!(requests, responses).map(|_| ())
}

/// Bytes read at a time each way (tokio's `copy` uses 8 KiB).
const RELAY_BUFFER: usize = 16 * 1024;

/// Holds a connection until an endpoint of the Service accepts it. `Err(None)`: nothing
/// will come (no autoscaler scales the Service's workload from zero); `Err(Some(why))`:
/// held too long, or too many held.
async fn hold(route: &Route, activator: &Activator, client: IpAddr) -> Result<(TcpStream, SocketAddr), Option<String>> {
    let service = route.backends().service.clone();
    let Some((namespace, name)) = crate::services::service_key(&service) else { return Err(None) };
    let port = service.rsplit_once(':').map(|(_, port)| port).unwrap_or_default();
    let mut serving = route.serving.subscribe();
    let holding = activator.hold(namespace, name).map_err(NotHeld::into_reason)?;
    let mut local_pods = holding.local_changes();
    loop {
        holding.wake().await.map_err(NotHeld::into_reason)?;
        let wake_again = tokio::time::Instant::now() + crate::activator::WAKE_AGAIN_AFTER;
        loop {
            for endpoint in holding.local_endpoints(|p| crate::services::port_name(p) == port) {
                if let Ok(stream) = dial(endpoint).await {
                    holding.released();
                    return Ok((stream, endpoint));
                }
            }
            enum Woke {
                Endpoints,
                LocalPod,
                WakeAgain,
            }
            let woke = tokio::select! {
                Ok(_) = serving.wait_for(|s| *s) => Woke::Endpoints,
                Ok(()) = local_pods.changed() => Woke::LocalPod,
                _ = tokio::time::sleep_until(wake_again) => Woke::WakeAgain,
            };
            match woke {
                Woke::WakeAgain => break,
                Woke::LocalPod => continue,
                Woke::Endpoints => {
                    if let Some(connected) = connect(route, client).await {
                        holding.released();
                        return Ok(connected);
                    }
                    // Endpoints of pods that just went: wait for the list to change.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

/// A plain HTTP 503 answer (the held connections are to HTTP functions).
fn service_unavailable(why: &str) -> String {
    let body = format!("{why}\n");
    format!("HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len())
}

/// A connection to the first candidate endpoint that accepts one.
async fn connect(route: &Route, client: IpAddr) -> Option<(TcpStream, SocketAddr)> {
    for endpoint in route.candidates(client) {
        match dial(endpoint).await {
            Ok(s) => return Some((s, endpoint)),
            Err(e) => tracing::debug!(error = %e, service = %route.backends().service, "endpoint did not accept; trying the next"),
        }
    }
    None
}

/// Relays datagrams on `socket`: each client address is a flow with its own upstream
/// socket to one endpoint, and replies go back from the frontend's address.
pub async fn serve_udp(socket: UdpSocket, route: Arc<Route>) {
    let socket = Arc::new(socket);
    let flows: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, client)) = socket.recv_from(&mut buf).await else { continue };
        let existing = flows.lock().unwrap().get(&client).cloned();
        let upstream = match existing {
            Some(u) => u,
            None => {
                let Some(endpoint) = route.candidates(client.ip()).first().copied() else { continue };
                let Ok(u) = UdpSocket::bind(SocketAddr::new(unspecified(endpoint), 0)).await else { continue };
                if u.connect(endpoint).await.is_err() {
                    continue;
                }
                route.used(client.ip(), endpoint);
                let u = Arc::new(u);
                flows.lock().unwrap().insert(client, u.clone());
                tokio::spawn(reply(u.clone(), socket.clone(), client, flows.clone()));
                u
            }
        };
        let _ = upstream.send(&buf[..n]).await;
    }
}

/// Sends an endpoint's replies back to the client until the flow goes idle.
async fn reply(upstream: Arc<UdpSocket>, frontend: Arc<UdpSocket>, client: SocketAddr, flows: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>>) {
    let mut buf = vec![0u8; 65_536];
    while let Ok(Ok(n)) = tokio::time::timeout(UDP_IDLE, upstream.recv(&mut buf)).await {
        let _ = frontend.send_to(&buf[..n], client).await;
    }
    flows.lock().unwrap().remove(&client);
}

fn unspecified(like: SocketAddr) -> IpAddr {
    match like {
        SocketAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(endpoints: &[&str], affinity: Option<Duration>) -> Arc<Route> {
        Route::new(Backends { service: "default/web:http".into(), endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(), affinity })
    }

    #[test]
    fn round_robin_over_endpoints() {
        let r = route(&["10.0.0.1:80", "10.0.0.2:80"], None);
        let client: IpAddr = "10.0.0.9".parse().unwrap();
        let firsts: Vec<SocketAddr> = (0..4).map(|_| r.candidates(client)[0]).collect();
        assert_eq!(firsts[0], firsts[2]);
        assert_ne!(firsts[0], firsts[1]);
        assert_eq!(r.candidates(client).len(), 2);
        assert!(route(&[], None).candidates(client).is_empty());
    }

    #[test]
    fn client_ip_affinity_sticks_until_the_endpoint_goes() {
        let r = route(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"], Some(Duration::from_secs(60)));
        let client: IpAddr = "10.0.0.9".parse().unwrap();
        let first = r.candidates(client)[0];
        r.used(client, first);
        assert!((0..5).all(|_| r.candidates(client)[0] == first));
        // Another client is not pinned.
        let other: IpAddr = "10.0.0.8".parse().unwrap();
        assert!((0..5).any(|_| r.candidates(other)[0] != first));
        r.update(Backends { service: "default/web:http".into(), endpoints: vec!["10.0.0.7:80".parse().unwrap()], affinity: Some(Duration::from_secs(60)) });
        assert_eq!(r.candidates(client)[0], "10.0.0.7:80".parse::<SocketAddr>().unwrap());
    }

    #[tokio::test]
    async fn tcp_skips_refusing_endpoints_and_resets_without_any() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good = echo.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut b = [0u8; 5];
                    s.read_exact(&mut b).await.unwrap();
                    s.write_all(&b).await.unwrap();
                });
            }
        });
        // A port nothing listens on: bind, note it, close.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let r = Route::new(Backends { service: "t".into(), endpoints: vec![closed, good], affinity: None });
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = front.local_addr().unwrap();
        tokio::spawn(serve_tcp(front, r.clone(), None, Arc::default()));
        for _ in 0..4 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"hello").await.unwrap();
            let mut b = [0u8; 5];
            c.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"hello");
        }
        r.update(Backends { service: "t".into(), endpoints: vec![], affinity: None });
        let mut c = TcpStream::connect(addr).await.unwrap();
        let mut b = [0u8; 1];
        assert!(!matches!(c.read(&mut b).await, Ok(n) if n > 0));
    }

    #[tokio::test]
    async fn http_requests_over_a_connection_are_counted_per_endpoint() {
        use tokio::io::{AsyncBufReadExt, BufReader};
        // An HTTP/1.1 server that answers each request head (and its 2-byte body) with 200.
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = server.local_addr().unwrap();
        tokio::spawn(async move {
            let (s, _) = server.accept().await.unwrap();
            let (read, mut write) = s.into_split();
            let mut lines = BufReader::new(read);
            let mut line = String::new();
            while lines.read_line(&mut line).await.unwrap() > 0 {
                if line == "\r\n" {
                    let mut body = [0u8; 2];
                    lines.read_exact(&mut body).await.unwrap();
                    write.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.unwrap();
                }
                line.clear();
            }
        });
        let counts: Arc<RequestCounts> = Arc::default();
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = front.local_addr().unwrap();
        tokio::spawn(serve_tcp(front, Route::new(Backends { service: "t".into(), endpoints: vec![endpoint], affinity: None }), None, counts.clone()));
        let mut c = TcpStream::connect(addr).await.unwrap();
        for _ in 0..3 {
            // The body looks like a request head; it is not one.
            c.write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nGE").await.unwrap();
            let mut answer = [0u8; 40];
            c.read_exact(&mut answer).await.unwrap();
            assert!(answer.ends_with(b"ok"));
        }
        let (ip, counted) = counts.snapshot()[0];
        assert_eq!((ip, counted.requests, counted.in_flight), (endpoint.ip(), 3, 0));
    }

    #[tokio::test]
    async fn udp_flows_get_their_replies() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            let mut b = [0u8; 64];
            loop {
                let (n, from) = server.recv_from(&mut b).await.unwrap();
                let mut reply = b[..n].to_vec();
                reply.reverse();
                server.send_to(&reply, from).await.unwrap();
            }
        });
        let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = front.local_addr().unwrap();
        tokio::spawn(serve_udp(front, Route::new(Backends { service: "t".into(), endpoints: vec![server_addr], affinity: None })));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(addr).await.unwrap();
        for msg in [&b"abc"[..], b"xyz1"] {
            client.send(msg).await.unwrap();
            let mut b = [0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut b)).await.unwrap().unwrap();
            let mut want = msg.to_vec();
            want.reverse();
            assert_eq!(&b[..n], &want[..]);
        }
    }
}
