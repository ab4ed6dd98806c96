//! The transport of exec and attach sessions: Kubernetes' stream channels (0 stdin,
//! 1 stdout, 2 stderr, 3 the final `Status`, 4 terminal resizes) over either
//! - a WebSocket (`v5.channel.k8s.io`, which kubectl 1.30+ asks for first, and
//!   `v4.channel.k8s.io`, the Python client's): one binary message per piece, led by its
//!   channel's byte; v5 adds 255 to close a channel;
//! - or SPDY/3.1 (`v4.channel.k8s.io`, what kubectl before 1.30 speaks): one stream per
//!   channel, opened by the client with a `streamType` header before anything flows.
//!
//! Sessions see neither: they read [`Input`] and write through [`Output`].

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::http::{StatusCode, header};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use skiff_core::exec::ExecOptions;
use tokio::sync::mpsc;

use crate::server::status;
use crate::spdy::{self, Frame, Out};

/// The WebSocket protocols served, most preferred first.
pub const WEBSOCKET_PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// The channel protocol served over SPDY (its `Status` on the error stream).
const SPDY_PROTOCOL: &str = "v4.channel.k8s.io";

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// What the client sends. (The channel ending means the client has gone.)
pub enum Input {
    Stdin(Vec<u8>),
    /// The client will send no more input.
    StdinClosed,
}

enum Piece {
    Data(u8, Vec<u8>),
    End(Value),
}

/// Where a session's output goes.
pub struct Output {
    pieces: mpsc::Sender<Piece>,
    writer: tokio::task::JoinHandle<()>,
}

impl Output {
    /// Sends `data` on `channel`; false once the client has gone.
    pub async fn send(&self, channel: u8, data: Vec<u8>) -> bool {
        self.pieces.send(Piece::Data(channel, data)).await.is_ok()
    }

    /// Ends the session with its `Status`, and waits until it is written.
    pub async fn end(self, report: &Value) {
        let _ = self.pieces.send(Piece::End(report.clone())).await;
        drop(self.pieces);
        let _ = self.writer.await;
    }
}

/// How a stream request asked to be upgraded.
pub enum Upgrade {
    WebSocket(WebSocketUpgrade),
    Spdy(OnUpgrade),
    Missing,
}

impl Upgrade {
    /// Reads the upgrade a request asks for.
    pub async fn of(request: axum::extract::Request) -> Self {
        let (mut parts, _) = request.into_parts();
        let spdy = parts.headers.get(header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|u| u.eq_ignore_ascii_case("SPDY/3.1"));
        if spdy {
            return parts.extensions.remove::<OnUpgrade>().map_or(Upgrade::Missing, Upgrade::Spdy);
        }
        WebSocketUpgrade::from_request_parts(&mut parts, &()).await.map_or(Upgrade::Missing, Upgrade::WebSocket)
    }

    /// Answers the upgrade and runs `session` once connected. Over SPDY the session starts
    /// when the client has opened the streams `options` ask for.
    pub fn accept<F, Fut>(self, options: &ExecOptions, headers: &axum::http::HeaderMap, session: F) -> Response
    where
        F: FnOnce(mpsc::Receiver<Input>, Output) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        match self {
            Upgrade::WebSocket(ws) => ws.protocols(WEBSOCKET_PROTOCOLS).on_upgrade(move |socket| async move {
                let (input, output) = websocket(socket);
                session(input, output).await;
            }),
            Upgrade::Spdy(upgrade) => {
                let offered = headers.get_all("x-stream-protocol-version").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|p| p.trim() == SPDY_PROTOCOL);
                if !offered {
                    return status(StatusCode::FORBIDDEN, "Forbidden", &format!("over SPDY, only {SPDY_PROTOCOL} is served"));
                }
                let mut wanted = vec![ERROR];
                wanted.extend([(options.stdin, STDIN), (options.stdout, STDOUT), (options.stderr && !options.tty, STDERR)].into_iter().filter_map(|(w, c)| w.then_some(c)));
                tokio::spawn(async move {
                    let Ok(io) = upgrade.await else { return };
                    if let Some((input, output)) = spdy_streams(TokioIo::new(io), wanted).await {
                        session(input, output).await;
                    }
                });
                spdy::switching_protocols(SPDY_PROTOCOL)
            }
            Upgrade::Missing => status(StatusCode::BAD_REQUEST, "BadRequest", &format!(
                "this stream is served over WebSocket ({}) or SPDY/3.1 ({SPDY_PROTOCOL})", WEBSOCKET_PROTOCOLS.join(", "))),
        }
    }
}

fn websocket(socket: WebSocket) -> (mpsc::Receiver<Input>, Output) {
    let (mut sink, mut incoming) = socket.split();
    let (input_tx, input) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(Ok(message)) = incoming.next().await {
            // The Python client sends text frames for text input.
            let data: bytes::Bytes = match message {
                Message::Binary(data) => data,
                Message::Text(text) => bytes::Bytes::copy_from_slice(text.as_str().as_bytes()),
                Message::Close(_) => break,
                _ => continue,
            };
            let piece = match (data.first(), data.get(1)) {
                (Some(&STDIN), _) => Input::Stdin(data[1..].to_vec()),
                (Some(&CLOSE), Some(&STDIN)) => Input::StdinClosed,
                _ => continue,
            };
            if input_tx.send(piece).await.is_err() {
                break;
            }
        }
    });
    let (pieces, mut outgoing) = mpsc::channel::<Piece>(16);
    let writer = tokio::spawn(async move {
        while let Some(piece) = outgoing.recv().await {
            match piece {
                Piece::Data(channel, data) => {
                    if sink.send(frame(channel, &data)).await.is_err() {
                        return;
                    }
                }
                Piece::End(report) => {
                    let _ = sink.send(frame(ERROR, report.to_string().as_bytes())).await;
                    // A normal closure: clients read any other close as a broken stream.
                    let _ = sink.send(Message::Close(Some(CloseFrame { code: close_code::NORMAL, reason: "".into() }))).await;
                    let _ = sink.close().await;
                    return;
                }
            }
        }
    });
    (input, Output { pieces, writer })
}

/// A WebSocket message of the channel protocols: the channel's byte, then the data.
pub fn frame(channel: u8, data: &[u8]) -> Message {
    Message::Binary([&[channel][..], data].concat().into())
}

/// How long an SPDY client has to open its streams.
const STREAMS_TIMEOUT: Duration = Duration::from_secs(30);

async fn spdy_streams<IO>(io: IO, wanted: Vec<u8>) -> Option<(mpsc::Receiver<Input>, Output)>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (read, write) = tokio::io::split(io);
    let mut reader = spdy::Reader::new(tokio::io::BufReader::new(read));
    let (out, frames) = spdy::spawn_writer(write);
    let mut streams: HashMap<u8, u32> = HashMap::new();
    // Accepts a stream the client opens, noting its channel.
    let open = |headers: &[(String, String)]| -> Option<u8> {
        let kind = headers.iter().find(|(k, _)| k == "streamtype").map(|(_, v)| v.as_str())?;
        Some(match kind {
            "error" => ERROR,
            "stdin" => STDIN,
            "stdout" => STDOUT,
            "stderr" => STDERR,
            "resize" => RESIZE,
            _ => return None,
        })
    };
    let opened = tokio::time::timeout(STREAMS_TIMEOUT, async {
        while !wanted.iter().all(|c| streams.contains_key(c)) {
            match reader.next().await {
                Ok(Some(Frame::SynStream { stream_id, headers, .. })) => match open(&headers) {
                    Some(channel) => {
                        let _ = out.send(Out::Reply(stream_id)).await;
                        streams.insert(channel, stream_id);
                    }
                    None => {
                        let _ = out.send(Out::Reset(stream_id, spdy::REFUSED_STREAM)).await;
                    }
                },
                Ok(Some(Frame::Ping { id })) => {
                    let _ = out.send(Out::Ping(id)).await;
                }
                Ok(Some(Frame::GoAway) | None) | Err(_) => return false,
                Ok(Some(_)) => {}
            }
        }
        true
    })
    .await;
    if opened != Ok(true) {
        return None;
    }
    let stdin = streams.get(&STDIN).copied();
    let (input_tx, input) = mpsc::channel(16);
    let pings = out.clone();
    let listener = tokio::spawn(async move {
        while let Ok(Some(frame)) = reader.next().await {
            match frame {
                Frame::Data { stream_id, fin, data } if Some(stream_id) == stdin => {
                    if !data.is_empty() && input_tx.send(Input::Stdin(data)).await.is_err() {
                        return;
                    }
                    if fin && input_tx.send(Input::StdinClosed).await.is_err() {
                        return;
                    }
                }
                // A late stream (a terminal's resizes) is accepted and ignored.
                Frame::SynStream { stream_id, .. } => {
                    let _ = pings.send(Out::Reply(stream_id)).await;
                }
                Frame::Ping { id } => {
                    let _ = pings.send(Out::Ping(id)).await;
                }
                Frame::GoAway => return,
                _ => {}
            }
        }
    });
    let (pieces, mut outgoing) = mpsc::channel::<Piece>(16);
    let writer = tokio::spawn(async move {
        while let Some(piece) = outgoing.recv().await {
            match piece {
                Piece::Data(channel, data) => {
                    if let Some(&id) = streams.get(&channel)
                        && out.send(Out::Data(id, data, false)).await.is_err()
                    {
                        break;
                    }
                }
                Piece::End(report) => {
                    if let Some(&id) = streams.get(&ERROR) {
                        let _ = out.send(Out::Data(id, report.to_string().into_bytes(), true)).await;
                    }
                    for channel in [STDOUT, STDERR] {
                        if let Some(&id) = streams.get(&channel) {
                            let _ = out.send(Out::Data(id, Vec::new(), true)).await;
                        }
                    }
                    break;
                }
            }
        }
        // Everything queued is written before the connection goes.
        listener.abort();
        drop(out);
        let _ = frames.await;
    });
    Some((input, Output { pieces, writer }))
}
