//! The container shim (conmon's role): one small process per container run, so that the
//! container outlives a restart of the agent, keeps its output logged while no agent
//! runs, and leaves its exit status for the next one.
//!
//! The agent starts it as `<its own binary> container-shim <runtime> <state> <bundle>
//! <id> <log>`. The shim leaves the agent's session (a Ctrl-C to the agent's terminal is
//! not for it), becomes its container's subreaper, waits for the word `run` on its stdin
//! (the agent starts it early, so that its start overlaps the pod sandbox's set-up; it
//! exits at end of file), runs the runtime's `run --detach`
//! with pipes as the container's stdout and stderr, and tells the agent on its own stdout
//! `started <pid>` or `failed` (the runtime's log says why). It then copies the
//! container's output into the log, in the agent's format, until the container exits,
//! writes the exit status to the bundle's `exit` file, and exits.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::logs::LogSink;

/// The first argument that makes a binary embedding the agent run as a shim.
pub const SUBCOMMAND: &str = "container-shim";

/// How a container run ended, as the shim leaves it in the bundle's `exit` file.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

/// Runs the shim and exits, if this process was started as one. Every binary that
/// embeds the agent calls it first thing in `main`: the agent starts its shims from its
/// own executable.
pub fn run_if_asked() {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_none_or(|a| a != SUBCOMMAND) {
        return;
    }
    let code = match run(&args[2..]) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("container shim: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// The shim's command line, for the agent to spawn.
pub fn command(runtime: &str, state: &Path, bundle: &Path, id: &str, log: &Path) -> std::io::Result<std::process::Command> {
    let mut c = std::process::Command::new(std::env::current_exe()?);
    c.arg(SUBCOMMAND).arg(runtime).arg(state).arg(bundle).arg(id).arg(log);
    Ok(c)
}

/// The exit status a shim left in `bundle`, once it has.
pub fn exit_status(bundle: &Path) -> Option<ExitStatus> {
    serde_json::from_slice(&std::fs::read(bundle.join("exit")).ok()?).ok()
}

fn run(args: &[OsString]) -> Result<(), String> {
    let [runtime, state, bundle, id, log] = args else {
        return Err(format!("usage: {SUBCOMMAND} RUNTIME STATE BUNDLE ID LOG"));
    };
    let bundle = PathBuf::from(bundle);
    let _ = rustix::process::setsid();
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).map_err(|e| format!("becoming a subreaper: {e}"))?;
    let sink = LogSink::create(Path::new(log)).map_err(|e| format!("opening the log: {e}"))?;
    let mut word = String::new();
    if std::io::stdin().read_line(&mut word).is_err() || word.trim() != "run" {
        return Ok(()); // the agent gave up on this run
    }
    let (out, out_w) = std::io::pipe().map_err(|e| e.to_string())?;
    let (err, err_w) = std::io::pipe().map_err(|e| e.to_string())?;
    // The command (and with it the pipes' write ends) is gone once the runtime has run:
    // the container holds the only writers left, so the copies end when it does.
    let ran = super::runtime_command(&runtime.to_string_lossy(), Path::new(state))
        .arg("--log")
        .arg(bundle.join("runtime.log"))
        .args(["run", "--detach", "--bundle"])
        .arg(&bundle)
        .arg("--pid-file")
        .arg(bundle.join("pid"))
        .arg(id)
        .stdin(Stdio::null())
        .stdout(out_w)
        .stderr(err_w)
        .status();
    let pid = ran.ok().filter(|s| s.success()).and_then(|_| std::fs::read_to_string(bundle.join("pid")).ok()).and_then(|p| p.trim().parse::<i32>().ok());
    let mut agent = std::io::stdout();
    let Some(pid) = pid else {
        let _ = writeln!(agent, "failed");
        return Ok(());
    };
    // The agent reads this one line; if it is gone by now, the container runs on anyway.
    let _ = writeln!(agent, "started {pid}").and_then(|_| agent.flush());
    let copies = [(out, 0), (err, 1)].map(|(mut from, stream)| {
        let sink = sink.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = from.read(&mut buf) {
                let _ = sink.write(stream, &buf[..n]);
            }
        })
    });
    let status = wait_for(pid)?;
    // The container's init is gone, and with it its PID namespace: the pipes close.
    for c in copies {
        let _ = c.join();
    }
    sink.finish();
    let tmp = bundle.join("exit.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&status).expect("serializable")).and_then(|_| std::fs::rename(&tmp, bundle.join("exit"))).map_err(|e| format!("writing the exit status: {e}"))
}

/// Reaps children (the runtime's helpers, reparented here) until `pid` exits.
fn wait_for(pid: i32) -> Result<ExitStatus, String> {
    use rustix::process::{WaitOptions, wait};
    loop {
        match wait(WaitOptions::empty()) {
            Ok(Some((p, status))) if p.as_raw_nonzero().get() == pid => {
                return Ok(match (status.exit_status(), status.terminating_signal()) {
                    (Some(code), _) => ExitStatus::Code(code),
                    (None, Some(signal)) => ExitStatus::Signal(signal),
                    _ => ExitStatus::Signal(9),
                });
            }
            Ok(_) | Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(format!("waiting for the container: {e}")),
        }
    }
}
