//! What several benches share: a real `docker-registry` on 127.0.0.1, the Wasm example
//! they run, and reading a process's memory.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct Registry {
    pub host: String,
    child: std::process::Child,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn start_registry(dir: &Path) -> anyhow::Result<Registry> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let host = format!("127.0.0.1:{port}");
    let config = dir.join("registry.yml");
    std::fs::write(&config, format!("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n", dir.join("blobs").display()))?;
    let child = std::process::Command::new("docker-registry").arg("serve").arg(&config)
        .stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting docker-registry ({e}); install Debian's docker-registry package"))?;
    let registry = Registry { host, child };
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&registry.host).await.is_ok() {
            return Ok(registry);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("docker-registry did not listen on {}", registry.host)
}

/// The WASI command benches run: `wasm`, or the wasi-hello example built for wasm32-wasip1.
pub fn example_wasm(wasm: Option<PathBuf>) -> anyhow::Result<(PathBuf, Vec<u8>)> {
    let path = wasm.unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("target"));
        target.join("wasm32-wasip1/release/wasi-hello.wasm")
    });
    let bytes = std::fs::read(&path).map_err(|e| anyhow::anyhow!("{}: {e} (build examples/wasi-hello for wasm32-wasip1, or pass --wasm)", path.display()))?;
    Ok((path, bytes))
}

/// Resident memory of a process (`self` or a pid), in bytes.
pub fn rss_of(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status")).ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())))
        .unwrap_or(0) * 1024
}
