//! `pods/exec` on this node (kubelet's `/exec/{namespace}/{pod}/{container}`), which the API
//! server forwards `kubectl exec` and the client libraries' exec streams to.
//!
//! A Wasm container has no shell or second binary to run: exec runs the container's own
//! WASI command again, in the pod's sandbox — its environment, its volumes, its limits —
//! with the request's words as argv (the first is argv[0], as a process's name). A
//! container serving wasi:http has no command to run, and says so.
//!
//! The streams are Kubernetes' channels over WebSocket or SPDY ([`crate::channels`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use skiff_core::exec::ExecOptions;

use crate::channels::{Input, Output, STDERR, STDOUT, Upgrade};
use crate::runtime::{Exec, ExecIo, Exit};
use crate::server::status;

/// What exec and attach need of a running container: how to run a command in it, and
/// its current run's output.
#[derive(Clone)]
pub struct ExecTarget {
    pub exec: Arc<dyn Exec>,
    pub output: crate::logs::LogSink,
}

/// The running containers of the node's pods, by (namespace, pod, container).
#[derive(Default)]
pub struct ExecTargets(Mutex<HashMap<(String, String, String), ExecTarget>>);

impl ExecTargets {
    /// Makes a running container reachable by exec until the returned guard drops.
    pub fn register(self: &Arc<Self>, namespace: &str, pod: &str, container: &str, target: ExecTarget) -> Registered {
        let key = (namespace.to_string(), pod.to_string(), container.to_string());
        self.0.lock().unwrap().insert(key.clone(), target);
        Registered { targets: self.clone(), key }
    }

    pub(crate) fn get(&self, namespace: &str, pod: &str, container: &str) -> Option<ExecTarget> {
        self.0.lock().unwrap().get(&(namespace.to_string(), pod.to_string(), container.to_string())).cloned()
    }
}

pub struct Registered {
    targets: Arc<ExecTargets>,
    key: (String, String, String),
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.targets.0.lock().unwrap().remove(&self.key);
    }
}

/// Answers an exec request: the WebSocket session, or a Status saying why not.
pub fn handle(targets: &ExecTargets, (namespace, pod, container): (String, String, String), query: &str, headers: &HeaderMap, upgrade: Upgrade) -> Response {
    let options = match ExecOptions::parse(query) {
        Ok(o) => o,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    let Some(target) = targets.get(&namespace, &pod, &container) else {
        return status(StatusCode::NOT_FOUND, "NotFound", &format!("container {container:?} is not running in pod {namespace}/{pod} on this node"));
    };
    let asked = options.clone();
    upgrade.accept(&asked, headers, move |input, output| session(input, output, target.exec, options))
}

/// One exec: the command runs with its standard streams on the socket's channels; when
/// it exits, what is left of its output is sent, then its Status, then the socket closes.
async fn session(mut input: mpsc::Receiver<Input>, output: Output, exec: Arc<dyn Exec>, options: ExecOptions) {
    let (stdin_writer, stdin_reader) = tokio::io::duplex(64 * 1024);
    let (stdout_writer, stdout_reader) = tokio::io::duplex(64 * 1024);
    let (stderr_writer, stderr_reader) = tokio::io::duplex(64 * 1024);
    let argv = options.command.clone();
    let io = ExecIo { stdin: options.stdin.then_some(stdin_reader), stdout: stdout_writer, stderr: stderr_writer };
    let guest = {
        let argv = argv.clone();
        tokio::spawn(async move { exec.exec(argv, io).await })
    };
    let abort = guest.abort_handle();

    // Output: both streams, in the order the guest wrote them, each on its channel (one
    // channel, stdout, for a terminal).
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<(u8, Vec<u8>)>(16);
    let stderr_channel = if options.tty { STDOUT } else { STDERR };
    let pumps = [(stdout_reader, STDOUT, options.stdout), (stderr_reader, stderr_channel, options.stderr)].map(|(mut reader, channel, wanted)| {
        let out_tx = out_tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0; 32 * 1024];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) if wanted => {
                        let _ = out_tx.send((channel, buf[..n].to_vec())).await;
                    }
                    Ok(_) => {}
                }
            }
        })
    });
    drop(out_tx);

    // Input: stdin data until the client closes it or goes away.
    let stdin = tokio::spawn(async move {
        let mut stdin = Some(stdin_writer);
        while let Some(piece) = input.recv().await {
            match (piece, &mut stdin) {
                (Input::Stdin(data), Some(w)) => {
                    if w.write_all(&data).await.is_err() {
                        stdin = None;
                    }
                }
                (Input::StdinClosed, _) => stdin = None,
                _ => {}
            }
        }
    });

    let mut guest = guest;
    let exit = loop {
        tokio::select! {
            chunk = out_rx.recv() => match chunk {
                Some((channel, data)) => {
                    if !output.send(channel, data).await {
                        abort.abort();
                        return;
                    }
                }
                // Both pumps end only when the guest's streams close, at its exit.
                None => break (&mut guest).await,
            },
            result = &mut guest => {
                // The guest is done: what it wrote is still in the pumps.
                while let Some((channel, data)) = out_rx.recv().await {
                    if !output.send(channel, data).await {
                        return;
                    }
                }
                break result;
            }
        }
    };
    stdin.abort();
    for p in pumps {
        p.abort();
    }
    let report = match exit {
        Ok(Ok(exit)) => exit_status(&argv, &exit),
        Ok(Err(start)) => json!({"metadata": {}, "status": "Failure", "reason": "InternalError", "message": format!("error executing command {argv:?}: {start}")}),
        Err(_) => json!({"metadata": {}, "status": "Failure", "reason": "InternalError", "message": "the exec session was stopped"}),
    };
    output.end(&report).await;
}

/// The Status kubelet reports on the error channel when a command ends.
fn exit_status(argv: &[String], exit: &Exit) -> Value {
    if exit.code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    let why = exit.message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default();
    json!({"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
        "message": format!("command terminated with non-zero exit code: error executing command {argv:?}, exit code {}{why}", exit.code),
        "details": {"causes": [{"reason": "ExitCode", "message": exit.code.to_string()}]}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_read_as_kubelet_reports_them() {
        let argv = vec!["x".to_string()];
        assert_eq!(exit_status(&argv, &Exit { code: 0, reason: "Completed", message: None })["status"], "Success");
        let failed = exit_status(&argv, &Exit { code: 3, reason: "Error", message: None });
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0], json!({"reason": "ExitCode", "message": "3"}));
    }
}
