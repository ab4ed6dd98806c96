//! `pods/attach` on this node (kubelet's `/attach/{namespace}/{pod}/{container}`): a
//! running container's output as it is written, on the same channels as exec, until the client leaves or the run ends (then a `Success` Status, as kubelet
//! reports a container's exit to an attached client).
//!
//! Output only: a Wasm guest's standard input is empty, so attaching stdin is refused.
//! A client that falls more than a thousand writes behind misses output rather than
//! slow the container down.

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;
use skiff_core::exec::ExecOptions;
use tokio::sync::mpsc;

use crate::channels::{Input, Output, STDERR, STDOUT, Upgrade};
use crate::exec::ExecTargets;
use crate::logs;
use crate::server::status;

/// Answers an attach request: the WebSocket session, or a Status saying why not.
pub fn handle(targets: &ExecTargets, (namespace, pod, container): (String, String, String), query: &str, headers: &HeaderMap, upgrade: Upgrade) -> Response {
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
    // Followed from the request on, so nothing written during the upgrade is missed.
    let written = target.output.follow();
    let asked = options.clone();
    upgrade.accept(&asked, headers, move |input, output| session(input, output, written, options))
}

async fn session(mut input: mpsc::Receiver<Input>, output: Output, mut written: mpsc::Receiver<logs::Output>, options: ExecOptions) {
    loop {
        tokio::select! {
            piece = written.recv() => match piece {
                Some((stream, data)) => {
                    let (wanted, channel) = if stream == 0 { (options.stdout, STDOUT) } else { (options.stderr, if options.tty { STDOUT } else { STDERR }) };
                    if wanted && !output.send(channel, data).await {
                        return;
                    }
                }
                // The run ended.
                None => break,
            },
            // The client going away ends the session; the container runs on.
            from_client = input.recv() => if from_client.is_none() { return },
        }
    }
    output.end(&json!({"metadata": {}, "status": "Success"})).await;
}
