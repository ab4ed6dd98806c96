//! `pods/portforward` over WebSocket (`v4.channel.k8s.io`), as the Python client and
//! browser clients forward: the ports come in the query (`?ports=8080,9000`); port *i*
//! has data channel 2*i* and error channel 2*i*+1, each first announcing its port (two
//! bytes, little-endian). The agent connects to each port of the pod's address once, copies
//! bytes both ways, reports a failed connection on the error channel, and closes the
//! socket when every port's connection has ended. (kubectl forwards over SPDY:
//! [`crate::port_forward`].)

use axum::extract::ws::{CloseFrame, Message, WebSocketUpgrade, close_code};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use crate::server::status;

const PROTOCOL: &str = "v4.channel.k8s.io";

/// Whether a WebSocket request is one this module serves. kubectl 1.31+ first tries to
/// tunnel SPDY inside a WebSocket; refused, it falls back to plain SPDY.
pub fn serves(headers: &HeaderMap) -> bool {
    headers.get_all("sec-websocket-protocol").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|p| p.trim() == PROTOCOL)
}

/// The ports a query asks for.
fn ports(query: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for (key, value) in query.split('&').filter_map(|p| p.split_once('=')) {
        if key == "ports" {
            for p in value.split("%2C").flat_map(|p| p.split(',')) {
                ports.push(p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("invalid port {p:?}"))?);
            }
        }
    }
    if ports.is_empty() {
        return Err("port-forward over WebSocket needs ?ports=".into());
    }
    Ok(ports)
}

pub fn accept(ws: WebSocketUpgrade, ip: String, pod: String, query: &str) -> Response {
    let ports = match ports(query) {
        Ok(p) => p,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    ws.protocols([PROTOCOL]).on_upgrade(move |socket| async move {
        let (mut sink, mut incoming) = socket.split();
        let (out, mut outgoing) = mpsc::channel::<(u8, Vec<u8>)>(64);
        let mut to_pods = Vec::new();
        let mut forwards = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let (data, error) = ((2 * i) as u8, (2 * i + 1) as u8);
            for channel in [data, error] {
                let _ = out.send((channel, port.to_le_bytes().to_vec())).await;
            }
            let (to_pod, from_client) = mpsc::channel(16);
            to_pods.push(to_pod);
            forwards.push(tokio::spawn(forward(ip.clone(), *port, pod.clone(), (data, error), out.clone(), from_client)));
        }
        drop(out);
        let reader = tokio::spawn(async move {
            while let Some(Ok(message)) = incoming.next().await {
                let data = match message {
                    Message::Binary(data) => data,
                    Message::Close(_) => break,
                    _ => continue,
                };
                let Some((&channel, rest)) = data.split_first() else { continue };
                if let Some(to_pod) = to_pods.get(usize::from(channel / 2)).filter(|_| channel % 2 == 0)
                    && !rest.is_empty()
                {
                    let _ = to_pod.send(rest.to_vec()).await;
                }
            }
        });
        // Until every port's connection has ended (each holds a sender), or the client goes.
        while let Some((channel, data)) = outgoing.recv().await {
            if sink.send(crate::channels::frame(channel, &data)).await.is_err() {
                break;
            }
        }
        let _ = sink.send(Message::Close(Some(CloseFrame { code: close_code::NORMAL, reason: "".into() }))).await;
        reader.abort();
        for f in forwards {
            f.abort();
        }
    })
}

/// One port: connected to the pod, bytes both ways until the pod closes its side.
async fn forward(ip: String, port: u16, pod: String, (data, error): (u8, u8), out: mpsc::Sender<(u8, Vec<u8>)>, from_client: mpsc::Receiver<Vec<u8>>) {
    let relayed = crate::port_forward::relay(&ip, port, from_client, |chunk| {
        let out = out.clone();
        async move { out.send((data, chunk)).await.is_ok() }
    })
    .await;
    if let Err(e) = relayed {
        let _ = out.send((error, format!("error forwarding port {port} to pod {pod}: {e}").into_bytes())).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_come_from_the_query() {
        assert_eq!(super::ports("ports=8080,9").unwrap(), [8080, 9]);
        assert_eq!(super::ports("ports=8080%2C9&ports=7").unwrap(), [8080, 9, 7]);
        assert!(super::ports("ports=0").is_err());
        assert!(super::ports("").is_err());
    }
}
