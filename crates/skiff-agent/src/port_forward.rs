//! `pods/portforward` on this node (kubelet's `/portForward/{namespace}/{pod}`), which the
//! API server forwards `kubectl port-forward` to. The connection is upgraded to SPDY/3.1
//! with the `portforward.k8s.io` stream protocol: for each connection the client accepts
//! locally, it opens an error stream and a data stream (headers `streamType`, `port`,
//! `requestID`); the agent connects to the pod's address on that port and copies bytes
//! both ways, reporting a failed connection on the error stream. A Wasm pod's listeners
//! are bound on its address on this node, so the agent reaches them directly.

use std::collections::HashMap;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::channels::Upgrade;
use crate::server::status;
use crate::spdy::{self, Frame, Out};

const PROTOCOL: &str = "portforward.k8s.io";

/// Answers a port-forward request: the upgrade to SPDY, or a Status saying why not.
pub fn handle(pod_ip: Option<String>, pod: String, query: &str, headers: &HeaderMap, upgrade: Upgrade) -> Response {
    let Some(ip) = pod_ip else {
        return status(StatusCode::NOT_FOUND, "NotFound", &format!("pod {pod} is not running on this node"));
    };
    let upgrade = match upgrade {
        Upgrade::Spdy(upgrade) => upgrade,
        Upgrade::WebSocket(ws) if crate::port_forward_websocket::serves(headers) => return crate::port_forward_websocket::accept(ws, ip, pod, query),
        _ => return status(StatusCode::BAD_REQUEST, "BadRequest", "port-forward is served over SPDY/3.1 (portforward.k8s.io) or WebSocket (v4.channel.k8s.io); kubectl falls back to SPDY"),
    };
    let offered = headers.get_all("x-stream-protocol-version").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|p| p.trim() == PROTOCOL);
    if !offered {
        return status(StatusCode::FORBIDDEN, "Forbidden", &format!("port-forward speaks only {PROTOCOL}"));
    }
    tokio::spawn(async move {
        if let Ok(io) = upgrade.await {
            session(TokioIo::new(io), ip, pod).await;
        }
    });
    spdy::switching_protocols(PROTOCOL)
}

async fn session<IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static>(io: IO, ip: String, pod: String) {
    let (read, write) = tokio::io::split(io);
    let mut reader = spdy::Reader::new(tokio::io::BufReader::with_capacity(256 * 1024, read));
    let (out, writer) = spdy::spawn_writer(write);
    let mut error_streams: HashMap<String, u32> = HashMap::new();
    let mut data_streams: HashMap<u32, mpsc::Sender<Vec<u8>>> = HashMap::new();
    while let Ok(Some(frame)) = reader.next().await {
        match frame {
            Frame::SynStream { stream_id, headers, .. } => {
                let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default();
                let _ = out.send(Out::Reply(stream_id)).await;
                let request = header("requestid");
                match header("streamtype").as_str() {
                    "error" => {
                        error_streams.insert(request, stream_id);
                    }
                    "data" => {
                        let Ok(port) = header("port").parse::<u16>() else {
                            let _ = out.send(Out::Reset(stream_id, spdy::REFUSED_STREAM)).await;
                            continue;
                        };
                        let (to_pod, from_client) = mpsc::channel(16);
                        data_streams.insert(stream_id, to_pod);
                        let error_stream = error_streams.remove(&request);
                        tokio::spawn(forward(ip.clone(), port, pod.clone(), stream_id, error_stream, out.clone(), from_client));
                    }
                    _ => {
                        let _ = out.send(Out::Reset(stream_id, spdy::REFUSED_STREAM)).await;
                    }
                }
            }
            Frame::Data { stream_id, fin, data } => {
                if let Some(to_pod) = data_streams.get(&stream_id)
                    && !data.is_empty()
                {
                    let _ = to_pod.send(data).await;
                }
                if fin {
                    // The client is done writing: the pod's side of the connection is shut.
                    data_streams.remove(&stream_id);
                }
            }
            Frame::RstStream { stream_id, .. } => {
                data_streams.remove(&stream_id);
            }
            Frame::Ping { id } => {
                let _ = out.send(Out::Ping(id)).await;
            }
            Frame::GoAway => break,
            Frame::Other => {}
        }
    }
    drop(data_streams);
    drop(out);
    let _ = writer.await;
}

/// One forwarded connection: to the pod's `port`, bytes both ways, then both streams
/// closed (the error stream carrying why, if the connection failed).
async fn forward(ip: String, port: u16, pod: String, stream_id: u32, error_stream: Option<u32>, out: mpsc::Sender<Out>, from_client: mpsc::Receiver<Vec<u8>>) {
    let relayed = relay(&ip, port, from_client, |chunk| {
        let out = out.clone();
        async move { out.send(Out::Data(stream_id, chunk, false)).await.is_ok() }
    })
    .await;
    if let (Err(e), Some(es)) = (&relayed, error_stream) {
        let message = format!("error forwarding port {port} to pod {pod}: {e}");
        let _ = out.send(Out::Data(es, message.into_bytes(), true)).await;
    }
    let _ = out.send(Out::Data(stream_id, Vec::new(), true)).await;
    if let (Ok(()), Some(es)) = (relayed, error_stream) {
        let _ = out.send(Out::Data(es, Vec::new(), true)).await;
    }
}

/// Connects to the pod's `port` and relays until the pod closes its side: the client's
/// chunks in (the pod's write side shut once the client is done), the pod's bytes out
/// through `send` (false: the client has gone).
pub(crate) async fn relay<F, Fut>(ip: &str, port: u16, mut from_client: mpsc::Receiver<Vec<u8>>, mut send: F) -> std::io::Result<()>
where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: Future<Output = bool>,
{
    let tcp = tokio::net::TcpStream::connect((ip, port)).await?;
    let _ = tcp.set_nodelay(true);
    let (mut from_pod, mut to_pod) = tcp.into_split();
    let up = async {
        while let Some(chunk) = from_client.recv().await {
            if to_pod.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to_pod.shutdown().await;
        std::future::pending::<()>().await
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from_pod.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !send(buf[..n].to_vec()).await {
                        break;
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = down => {}
        _ = up => {}
    }
    Ok(())
}

/// The address of a pod this node runs, by namespace and name.
pub fn pod_address(agent: &crate::Agent, namespace: &str, name: &str) -> Option<String> {
    agent.pod(namespace, name).map(|pod| agent.pod_ip(&pod)).filter(|ip| !ip.is_empty())
}
