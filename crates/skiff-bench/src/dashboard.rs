//! The `dashboard` bench: the dashboard's pod list with 10,000 pods in the cluster, loaded
//! fresh in a real headless Chromium (Debian's, through its chromedriver's WebDriver
//! protocol). Timed by the page itself, from navigation start: its first rows drawn, and
//! every pod listed and drawn. The reference, in the same run, is `kubectl get pods -A`
//! on the same cluster: what the same answer costs a user at the command line.
//!
//! The control plane alone (`skiff server`) serves: with no node, the pods stay Pending,
//! which changes nothing in what the page lists.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use crate::registry::{Child, free_port, skiff_binary, spawn_skiff, wait_for_api, wait_for_kubeconfig};
use crate::report::Row;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A WebDriver session on a chromedriver this bench started.
struct Browser {
    http: Client<HttpConnector, Full<Bytes>>,
    session: String,
    port: u16,
    _driver: Child,
}

impl Browser {
    async fn start() -> anyhow::Result<Browser> {
        anyhow::ensure!(std::path::Path::new(CHROMEDRIVER).exists(), "{CHROMEDRIVER} is missing: apt-get install chromium chromium-driver");
        let port = free_port()?;
        let driver = Child(std::process::Command::new(CHROMEDRIVER).arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn()?);
        let http = Client::builder(TokioExecutor::new()).build_http();
        let mut browser = Browser { http, session: String::new(), port, _driver: driver };
        let deadline = Instant::now() + Duration::from_secs(20);
        while browser.call("GET", "/status", None).await.map(|s| s["ready"] != true).unwrap_or(true) {
            anyhow::ensure!(Instant::now() < deadline, "chromedriver did not answer within 20 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let options = json!({"binary": CHROMIUM, "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"]});
        let created = browser.call("POST", "/session", Some(json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "acceptInsecureCerts": true, "goog:chromeOptions": options}}}))).await?;
        browser.session = created["sessionId"].as_str().unwrap_or_default().to_string();
        anyhow::ensure!(!browser.session.is_empty(), "chromedriver opened no session: {created}");
        Ok(browser)
    }

    /// One WebDriver command; its `value`.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let request = hyper::Request::builder().method(method).uri(format!("http://127.0.0.1:{}{path}", self.port))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default())))?;
        let response = self.http.request(request).await?;
        let status = response.status();
        let answer: Value = serde_json::from_slice(&response.into_body().collect().await?.to_bytes())?;
        anyhow::ensure!(status.is_success(), "WebDriver {method} {path}: {status} {}", answer["value"]);
        Ok(answer["value"].clone())
    }

    async fn go(&self, url: &str) -> anyhow::Result<()> {
        self.call("POST", &format!("/session/{}/url", self.session), Some(json!({"url": url}))).await.map(drop)
    }

    async fn run(&self, script: &str) -> anyhow::Result<Value> {
        self.call("POST", &format!("/session/{}/execute/sync", self.session), Some(json!({"script": script, "args": []}))).await
    }
}

impl Drop for Browser {
    /// Ends the session, which ends its Chromium (chromedriver's child, which killing
    /// chromedriver would leave behind); a plain blocking request, as drop cannot await.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(s, "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", self.session);
            let _ = s.read(&mut [0u8; 512]);
        }
    }
}

fn pod(i: usize) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": format!("pod-{i:05}"), "labels": {"app": format!("app-{}", i % 100), "tier": "bench"}},
        "spec": {"runtimeClassName": "wasmtime", "containers": [{
            "name": "main", "image": "registry.skiff.internal/http-hello:v1", "ports": [{"containerPort": 8080}],
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}
    }))?)
}

pub async fn run(quick: bool, pods: usize, loads: usize, binary: Option<PathBuf>) -> anyhow::Result<Vec<Row>> {
    let (pods, loads) = if quick { (500, 1) } else { (pods, loads) };
    let binary = skiff_binary(binary)?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("server");
    let port = free_port()?;
    let _server = spawn_skiff(&binary, &["server", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"], &data)?;
    let kubeconfig = wait_for_kubeconfig(&data).await?;
    let client = wait_for_api(&kubeconfig, Duration::from_millis(50)).await?;
    let api: Api<Pod> = Api::namespaced(client, "default");
    let created: Vec<_> = futures::stream::iter(0..pods)
        .map(|i| { let api = api.clone(); async move { api.create(&PostParams::default(), &pod(i)?).await.map_err(anyhow::Error::from) } })
        .buffer_unordered(32).collect().await;
    created.into_iter().collect::<Result<Vec<_>, _>>()?;
    let token = std::fs::read_to_string(data.join("token"))?.trim().to_string();

    // The reference: the same list at the command line.
    let mut kubectl = Vec::new();
    for _ in 0..loads {
        let t = Instant::now();
        let out = tokio::process::Command::new("kubectl").args(["get", "pods", "-A", "--no-headers"]).env("KUBECONFIG", &kubeconfig).output().await?;
        anyhow::ensure!(out.status.success(), "kubectl get pods failed: {}", String::from_utf8_lossy(&out.stderr));
        anyhow::ensure!(out.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count() == pods, "kubectl listed the wrong number of pods");
        kubectl.push(t.elapsed());
    }

    let browser = Browser::start().await?;
    let base = format!("https://127.0.0.1:{port}/ui/");
    browser.go(&base).await?;
    browser.run(&format!("localStorage.setItem('skiff.token', {})", json!(token))).await?;
    let (mut first, mut shown) = (Vec::new(), Vec::new());
    let mut page = Value::Null;
    for load in 0..loads {
        // A new URL each time: a whole page load, nothing kept from the last.
        browser.go(&format!("{base}?load={load}#/pods")).await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        page = loop {
            let now = browser.run(&format!("const t = window.skiffTimings || {{}}; return {{first: t.firstRows, shown: t.shown, view: t.view, \
                count: document.getElementById('count')?.textContent, rows: document.querySelectorAll('#list .spacer .row').length, \
                heap: performance.memory?.usedJSHeapSize, expected: {pods}}}")).await?;
            if now["view"] == "pods" && now["shown"].is_number() && now["count"] == pods.to_string().as_str() {
                break now;
            }
            anyhow::ensure!(Instant::now() < deadline, "the page did not list {pods} pods within 120 s: {now}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        first.push(Duration::from_secs_f64(page["first"].as_f64().unwrap_or_default() / 1000.0));
        shown.push(Duration::from_secs_f64(page["shown"].as_f64().unwrap_or_default() / 1000.0));
    }
    for d in [&mut first, &mut shown, &mut kubectl] {
        d.sort();
    }
    let median = |d: &[Duration]| d[d.len() / 2];
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    let rows = page["rows"].as_u64().unwrap_or_default();
    let heap = page["heap"].as_f64().unwrap_or_default() / 1048576.0;
    println!("dashboard: the pod list of {pods} pods, loaded fresh {loads}× in headless Chromium (median; times from navigation start)");
    println!("{:<46} {:>10}", "first rows drawn", ms(median(&first)));
    println!("{:<46} {:>10}", format!("all {pods} listed and drawn"), ms(median(&shown)));
    println!("{:<46} {:>10}", "kubectl get pods -A (reference)", ms(median(&kubectl)));
    println!("{:<46} {:>10}", "table rows in the page / JS heap", format!("{rows} / {heap:.1} MiB"));
    anyhow::ensure!(rows > 0 && rows < 200, "the table holds {rows} rows: it is not virtualised");
    Ok(vec![
        Row::new(format!("dashboard: first rows drawn, {pods} pods (headless Chromium, fresh load)"), ms(median(&first)), "goal ≤ 1 s",
            Some(1.0 / median(&first).as_secs_f64())),
        Row::new(format!("dashboard: all {pods} pods listed and drawn ({rows} rows in the page, {heap:.0} MiB JS heap)"), ms(median(&shown)),
            format!("kubectl get pods -A: {} (same run)", ms(median(&kubectl))), Some(median(&kubectl).as_secs_f64() / median(&shown).as_secs_f64())),
    ])
}
