//! Container probes, as kubelet runs them: startup first (nothing else runs until it
//! passes), then liveness and readiness, each every `periodSeconds` after
//! `initialDelaySeconds`, with `timeoutSeconds`, `successThreshold` and
//! `failureThreshold`. Readiness sets the container's `ready`; a failed liveness or
//! startup probe ends the container so that it is restarted.
//!
//! Handlers: httpGet (port by number or name, path, headers, HTTP; HTTPS without
//! verification, as kubelet does), tcpSocket and grpc (the standard
//! `grpc.health.v1.Health/Check` over cleartext HTTP/2) against the pod's IP; exec, run
//! inside the container by its runtime ([`Exec`]: a process in a container, the command
//! again for a Wasm guest).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::runtime::{Exec, ExecIo};

/// What a probe found.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Success,
    Failure(String),
}

/// The probes of a container that has any, resolved against its ports.
pub struct Probes {
    pub startup: Option<Probe>,
    pub liveness: Option<Probe>,
    pub readiness: Option<Probe>,
}

impl Probes {
    pub fn of(container: &Container) -> Probes {
        Probes { startup: container.startup_probe.clone(), liveness: container.liveness_probe.clone(), readiness: container.readiness_probe.clone() }
    }

    pub fn any(&self) -> bool {
        self.startup.is_some() || self.liveness.is_some() || self.readiness.is_some()
    }
}

/// Probe timing with Kubernetes' defaults.
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub fn of(probe: &Probe) -> Timing {
        let secs = |v: Option<i32>, default: i32| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
        Timing {
            initial_delay: secs(probe.initial_delay_seconds, 0),
            period: secs(probe.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: probe.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: probe.failure_threshold.unwrap_or(3).max(1) as u32,
        }
    }
}

/// Runs one probe once against the pod's IP.
pub async fn run_once(probe: &Probe, container: &Container, pod_ip: &str, exec: Option<&Arc<dyn Exec>>, timeout: Duration) -> Outcome {
    let attempt = async {
        if let Some(h) = &probe.http_get {
            let port = match resolve_port(&h.port, container) {
                Ok(p) => p,
                Err(e) => return Outcome::Failure(e),
            };
            let host = h.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| pod_ip.to_string());
            let scheme = h.scheme.as_deref().unwrap_or("HTTP").to_ascii_lowercase();
            let path = h.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into());
            http_get(&scheme, &host, port, &path, h.http_headers.iter().flatten().map(|h| (h.name.clone(), h.value.clone())).collect()).await
        } else if let Some(t) = &probe.tcp_socket {
            let port = match resolve_port(&t.port, container) {
                Ok(p) => p,
                Err(e) => return Outcome::Failure(e),
            };
            let host = t.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| pod_ip.to_string());
            match tokio::net::TcpStream::connect((host.as_str(), port)).await {
                Ok(_) => Outcome::Success,
                Err(e) => Outcome::Failure(format!("dial tcp {host}:{port}: {e}")),
            }
        } else if let Some(action) = &probe.exec {
            match exec {
                Some(exec) => run_exec(exec, action.command.clone().unwrap_or_default()).await,
                None => Outcome::Failure("the container is not running: nothing to exec in".into()),
            }
        } else if let Some(g) = &probe.grpc {
            match u16::try_from(g.port) {
                Ok(port) => grpc_health_check(pod_ip, port, g.service.as_deref().unwrap_or_default()).await,
                Err(_) => Outcome::Failure(format!("port {} is out of range", g.port)),
            }
        } else {
            Outcome::Failure("the probe has no handler".into())
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Failure(format!("timeout after {}s", timeout.as_secs())),
    }
}

/// Runs a lifecycle hook (postStart, preStop) once: httpGet, tcpSocket or sleep.
pub async fn run_hook(handler: &k8s_openapi::api::core::v1::LifecycleHandler, container: &Container, pod_ip: &str, exec: Option<&Arc<dyn Exec>>) -> Outcome {
    if let Some(s) = &handler.sleep {
        tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64)).await;
        return Outcome::Success;
    }
    let probe = Probe { exec: handler.exec.clone(), http_get: handler.http_get.clone(), tcp_socket: handler.tcp_socket.clone(), ..Default::default() };
    // Hooks have no timeout of their own; the grace period bounds preStop.
    run_once(&probe, container, pod_ip, exec, Duration::from_secs(3600)).await
}

/// Runs a probe's or hook's command in the container: success is exit code 0; a
/// failure carries what the command wrote, as kubelet reports it.
async fn run_exec(exec: &Arc<dyn Exec>, argv: Vec<String>) -> Outcome {
    use tokio::io::AsyncReadExt;
    if argv.is_empty() {
        return Outcome::Failure("the exec action has no command".into());
    }
    let (stdout, mut out_reader) = tokio::io::duplex(64 * 1024);
    let (stderr, mut err_reader) = tokio::io::duplex(64 * 1024);
    let run = exec.exec(argv.clone(), ExecIo { stdin: None, stdout, stderr });
    let mut output = Vec::new();
    let read = async {
        let mut err = Vec::new();
        let _ = tokio::join!(out_reader.read_to_end(&mut output), err_reader.read_to_end(&mut err));
        output.extend(err);
    };
    let (result, _) = tokio::join!(run, read);
    let said = String::from_utf8_lossy(&output).trim().chars().take(1024).collect::<String>();
    match result {
        Ok(exit) if exit.code == 0 => Outcome::Success,
        Ok(exit) => Outcome::Failure(format!("command {argv:?} exited with {}: {said}", exit.code)),
        Err(e) => Outcome::Failure(format!("command {argv:?} could not run: {e}")),
    }
}

/// A port given by number, or by the name of one of the container's ports.
fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("port {n} is out of range")),
        IntOrString::String(name) => match name.parse::<u16>() {
            Ok(n) => Ok(n),
            Err(_) => container.ports.iter().flatten().find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("the container has no port named {name:?}")),
        },
    }
}

async fn http_get(scheme: &str, host: &str, port: u16, path: &str, headers: Vec<(String, String)>) -> Outcome {
    let url = format!("{scheme}://{host}:{port}{path}");
    let client = probe_client();
    let mut request = client.get(&url).header("User-Agent", "kube-probe/1.32");
    for (k, v) in headers {
        request = request.header(k, v);
    }
    match request.send().await {
        Ok(r) if (200..400).contains(&r.status().as_u16()) => Outcome::Success,
        Ok(r) => Outcome::Failure(format!("HTTP probe failed with statuscode: {}", r.status().as_u16())),
        Err(e) => Outcome::Failure(format!("Get {url:?}: {e}")),
    }
}

fn probe_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .redirect(reqwest::redirect::Policy::limited(10))
            .build()
            .expect("an HTTP client")
    })
}

/// One call of the gRPC health checking protocol's `Check` over cleartext HTTP/2;
/// success only when the service answers SERVING. Messages follow kubelet's.
async fn grpc_health_check(host: &str, port: u16, service: &str) -> Outcome {
    use http_body_util::BodyExt;
    let target = format!("{host}:{port}");
    let connect = async {
        let stream = tokio::net::TcpStream::connect(&target).await?;
        let (sender, connection) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
        tokio::spawn(connection);
        Ok::<_, std::io::Error>(sender)
    };
    let mut sender = match connect.await {
        Ok(s) => s,
        Err(e) => return Outcome::Failure(format!("failed to connect service {target:?}: {e}")),
    };
    let request = hyper::Request::post(format!("http://{target}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", "kube-probe/1.32")
        .body(http_body_util::Full::new(bytes::Bytes::from(grpc_frame(&health_check_request(service)))))
        .expect("a valid request");
    let response = match sender.send_request(request).await {
        Ok(r) => r,
        Err(e) => return Outcome::Failure(format!("rpc error: code = Unavailable desc = {e}")),
    };
    let (head, body) = response.into_parts();
    let collected = match body.collect().await {
        Ok(c) => c,
        Err(e) => return Outcome::Failure(format!("rpc error: code = Unavailable desc = {e}")),
    };
    // grpc-status comes in the trailers, or in the headers of a trailers-only answer.
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let field = |name: &str| trailers.get(name).or_else(|| head.headers.get(name)).and_then(|v| v.to_str().ok()).map(str::to_string);
    if !head.status.is_success() {
        return Outcome::Failure(format!("rpc error: code = Unknown desc = unexpected HTTP status code received from server: {}", head.status.as_u16()));
    }
    match field("grpc-status").as_deref() {
        Some("0") => {}
        Some("12") => return Outcome::Failure(format!("this server does not implement the grpc health protocol (grpc.health.v1.Health): {}", field("grpc-message").unwrap_or_default())),
        Some(code) => return Outcome::Failure(format!("rpc error: code = {code} desc = {}", field("grpc-message").unwrap_or_default())),
        None => return Outcome::Failure("rpc error: code = Internal desc = the server sent no grpc-status".into()),
    }
    match health_check_status(&collected.to_bytes()) {
        Some(1) => Outcome::Success,
        Some(status) => {
            let name = match status { 0 => "UNKNOWN", 2 => "NOT_SERVING", 3 => "SERVICE_UNKNOWN", _ => "UNRECOGNIZED" };
            Outcome::Failure(format!("service unhealthy (responded with {name:?})"))
        }
        None => Outcome::Failure("rpc error: code = Internal desc = the health check answer is not a HealthCheckResponse".into()),
    }
}

/// `HealthCheckRequest { string service = 1; }` in protobuf's wire format.
fn health_check_request(service: &str) -> Vec<u8> {
    let mut message = Vec::new();
    if !service.is_empty() {
        message.push(0x0a); // field 1, length-delimited
        let mut len = service.len();
        while len >= 0x80 {
            message.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        message.push(len as u8);
        message.extend_from_slice(service.as_bytes());
    }
    message
}

/// A gRPC message frame: uncompressed, with its length.
fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

/// The `status` of a framed `HealthCheckResponse { ServingStatus status = 1; }`;
/// an empty message is status 0 (UNKNOWN), as proto3 leaves defaults out.
fn health_check_status(frame: &[u8]) -> Option<u64> {
    let (&[compressed], rest) = frame.split_first_chunk::<1>()?;
    let (len, mut message) = rest.split_first_chunk::<4>()?;
    if compressed != 0 || message.len() != u32::from_be_bytes(*len) as usize {
        return None;
    }
    let mut status = 0;
    while let Some((&key, rest)) = message.split_first() {
        let (value, rest) = varint(rest)?;
        match key {
            0x08 => status = value,
            // Another varint field: skip it, as protobuf readers must.
            k if k & 7 == 0 => {}
            _ => return None,
        }
        message = rest;
    }
    Some(status)
}

fn varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

/// Counts consecutive results against a probe's thresholds.
#[derive(Default)]
pub struct Verdict {
    successes: u32,
    failures: u32,
}

impl Verdict {
    /// Records a result; returns `Some(true)` when the success threshold is reached,
    /// `Some(false)` at the failure threshold, `None` while undecided.
    pub fn record(&mut self, outcome: &Outcome, timing: &Timing) -> Option<bool> {
        match outcome {
            Outcome::Success => {
                self.failures = 0;
                self.successes += 1;
                (self.successes >= timing.success_threshold).then_some(true)
            }
            Outcome::Failure(_) => {
                self.successes = 0;
                self.failures += 1;
                (self.failures >= timing.failure_threshold).then_some(false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_need_consecutive_results() {
        let timing = Timing { initial_delay: Duration::ZERO, period: Duration::from_secs(1), timeout: Duration::from_secs(1), success_threshold: 2, failure_threshold: 3 };
        let mut v = Verdict::default();
        let fail = Outcome::Failure("x".into());
        assert_eq!(v.record(&fail, &timing), None);
        assert_eq!(v.record(&fail, &timing), None);
        assert_eq!(v.record(&Outcome::Success, &timing), None);
        assert_eq!(v.record(&Outcome::Success, &timing), Some(true));
        assert_eq!(v.record(&fail, &timing), None);
        assert_eq!(v.record(&fail, &timing), None);
        assert_eq!(v.record(&fail, &timing), Some(false));
    }

    #[test]
    fn named_ports_resolve() {
        let c: Container = serde_json::from_value(serde_json::json!({"name": "c", "ports": [{"name": "http", "containerPort": 8080}]})).unwrap();
        assert_eq!(resolve_port(&IntOrString::String("http".into()), &c), Ok(8080));
        assert_eq!(resolve_port(&IntOrString::Int(81), &c), Ok(81));
        assert!(resolve_port(&IntOrString::String("grpc".into()), &c).is_err());
    }

    #[test]
    fn health_check_messages() {
        assert_eq!(grpc_frame(&health_check_request("")), vec![0, 0, 0, 0, 0]);
        assert_eq!(grpc_frame(&health_check_request("db")), vec![0, 0, 0, 0, 4, 0x0a, 2, b'd', b'b']);
        assert_eq!(health_check_request(&"x".repeat(200))[..3], [0x0a, 0xc8, 0x01]);
        assert_eq!(health_check_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
        assert_eq!(health_check_status(&[0, 0, 0, 0, 2, 0x08, 2]), Some(2));
        assert_eq!(health_check_status(&[0, 0, 0, 0, 0]), Some(0));
        assert_eq!(health_check_status(&[0, 0, 0, 0, 3, 0x08, 1]), None);
        assert_eq!(health_check_status(&[1, 0, 0, 0, 2, 0x08, 1]), None);
        assert_eq!(health_check_status(&[]), None);
    }

    proptest::proptest! {
        /// Any bytes from a server are an answer or a refusal, never a panic; a well-formed
        /// answer reads back its status.
        #[test]
        fn health_answers_parse_safely(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..32), status in 0u64..1 << 40) {
            let _ = health_check_status(&bytes);
            let mut message = vec![0x08];
            let mut v = status;
            while v >= 0x80 { message.push((v as u8 & 0x7f) | 0x80); v >>= 7; }
            message.push(v as u8);
            proptest::prop_assert_eq!(health_check_status(&grpc_frame(&message)), Some(status));
        }
    }

    #[tokio::test]
    async fn tcp_and_http_probes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let status = if String::from_utf8_lossy(&buf[..n]).starts_with("GET /bad") { "500 Internal Server Error" } else { "200 OK" };
                let _ = s.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes()).await;
            }
        });
        let c = Container { name: "c".into(), ..Default::default() };
        let probe = |json: serde_json::Value| serde_json::from_value::<Probe>(json).unwrap();
        let one = Duration::from_secs(1);
        assert_eq!(run_once(&probe(serde_json::json!({"tcpSocket": {"port": port}})), &c, "127.0.0.1", None, one).await, Outcome::Success);
        assert_eq!(run_once(&probe(serde_json::json!({"httpGet": {"port": port, "path": "/ok"}})), &c, "127.0.0.1", None, one).await, Outcome::Success);
        let bad = run_once(&probe(serde_json::json!({"httpGet": {"port": port, "path": "/bad"}})), &c, "127.0.0.1", None, one).await;
        assert_eq!(bad, Outcome::Failure("HTTP probe failed with statuscode: 500".into()));
        assert!(matches!(run_once(&probe(serde_json::json!({"exec": {"command": ["true"]}})), &c, "127.0.0.1", None, one).await, Outcome::Failure(m) if m.contains("not running")));
    }
}
