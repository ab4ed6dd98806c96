//! `pods/attach` on this node (kubelet's `/attach/{namespace}/{pod}/{container}`): a
//! running container's output as it is written, on the same WebSocket channel protocol
//! as exec, until the client leaves or the run ends (then a `Success` Status, as kubelet
//! reports a container's exit to an attached client).
//!
//! Output only: a Wasm guest's standard input is empty, so attaching stdin is refused.
//! A client that falls more than a thousand writes behind misses output rather than
//! slow the container down.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::Response;
use futures::StreamExt;
use serde_json::json;
use skiff_core::exec::ExecOptions;

use crate::exec::{ExecTargets, PROTOCOLS, STDERR, STDOUT, end, send};
use crate::logs::Output;
use crate::server::status;

/// Answers an attach request: the WebSocket session, or a Status saying why not.
pub fn handle(targets: &ExecTargets, (namespace, pod, container): (String, String, String), query: &str, upgrade: Option<WebSocketUpgrade>) -> Response {
    let options = match ExecOptions::parse_attach(query) {
        Ok(o) => o,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    let Some(target) = targets.get(&namespace, &pod, &container) else {
        return status(StatusCode::NOT_FOUND, "NotFound", &format!("container {container:?} is not running in pod {namespace}/{pod} on this node"));
    };
    if options.stdin {
        return status(StatusCode::BAD_REQUEST, "BadRequest", &format!(
            "cannot attach to the standard input of container {container:?}: a Wasm guest's stdin is empty; attach without -i to follow its output"));
    }
    let Some(upgrade) = upgrade else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", &format!("attach is served over WebSocket ({}); SPDY is not supported", PROTOCOLS.join(", ")));
    };
    // Followed from the request on, so nothing written during the upgrade is missed.
    let output = target.output.follow();
    upgrade.protocols(PROTOCOLS).on_upgrade(move |socket| session(socket, output, options))
}

async fn session(socket: WebSocket, mut output: tokio::sync::mpsc::Receiver<Output>, options: ExecOptions) {
    let (mut sink, mut incoming) = socket.split();
    loop {
        tokio::select! {
            piece = output.recv() => match piece {
                Some((stream, data)) => {
                    let (wanted, channel) = if stream == 0 { (options.stdout, STDOUT) } else { (options.stderr, if options.tty { STDOUT } else { STDERR }) };
                    if wanted && send(&mut sink, channel, &data).await.is_err() {
                        return;
                    }
                }
                // The run ended.
                None => break,
            },
            // The client closing (or going away) ends the session; the container runs on.
            message = incoming.next() => if matches!(message, None | Some(Err(_)) | Some(Ok(Message::Close(_)))) { return },
        }
    }
    end(sink, &json!({"metadata": {}, "status": "Success"})).await;
}
