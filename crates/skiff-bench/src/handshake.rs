//! The `handshake` bench: a new client's first answer from the API over TLS — TCP connect,
//! the TLS 1.3 handshake, one authenticated GET — as every `kubectl` run pays it. The API
//! server serves as `skiff up` does (its TLS listener, certificates from its CA, client
//! certificates asked for); the reference is a real etcd serving TLS with the same
//! certificate, answering `GET /version`: Go's crypto/tls, which kube-apiserver uses.
//! One connection at a time, each closed after its answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::registry::{Child, free_port};
use crate::report::{Row, percentile};

/// How a client proves who it is.
enum Credential {
    Token(String),
    Certificate,
    None,
}

/// Times of one connection: the handshake done, the first answer read.
struct Timing {
    handshake: Duration,
    answered: Duration,
}

/// Connects to `port`, shakes hands with `tls` and GETs `path`; the answer must be 200.
async fn once(port: u16, tls: &tokio_rustls::TlsConnector, path: &str, credential: &Credential) -> anyhow::Result<Timing> {
    let started = Instant::now();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let stream = tls.connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp).await?;
    let handshake = started.elapsed();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driving = tokio::spawn(connection);
    let mut request = http::Request::get(path).header("Host", format!("127.0.0.1:{port}"));
    if let Credential::Token(t) = credential {
        request = request.header("Authorization", format!("Bearer {t}"));
    }
    let response = sender.send_request(request.body(Empty::<Bytes>::new())?).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    anyhow::ensure!(status == 200, "GET {path} answered {status}: {}", String::from_utf8_lossy(&body));
    let answered = started.elapsed();
    driving.abort();
    Ok(Timing { handshake, answered })
}

/// A TLS client trusting `ca_pem`, presenting `identity` (certificate and key, PEM) if given.
fn connector(ca_pem: &str, identity: Option<(&str, &str)>) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(ca?)?;
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>()?;
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(key.as_bytes())?)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// `count` connections one after another; the p50 and p99 of handshake and first answer.
async fn measure(what: &str, count: usize, port: u16, tls: &tokio_rustls::TlsConnector, path: &str, credential: &Credential) -> anyhow::Result<(Duration, Duration, Duration, Duration)> {
    // A few first, so neither side's first-connection costs count.
    for _ in 0..3 {
        once(port, tls, path, credential).await.map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    }
    let (mut handshakes, mut answers) = (Vec::with_capacity(count), Vec::with_capacity(count));
    for _ in 0..count {
        let t = once(port, tls, path, credential).await.map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        handshakes.push(t.handshake);
        answers.push(t.answered);
    }
    handshakes.sort();
    answers.sort();
    let figures = (percentile(&handshakes, 0.5), percentile(&handshakes, 0.99), percentile(&answers, 0.5), percentile(&answers, 0.99));
    println!("| {what} | {count} | {:.2} | {:.2} | {:.2} | {:.2} |", ms(figures.0), ms(figures.1), ms(figures.2), ms(figures.3));
    Ok(figures)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// etcd serving TLS on 127.0.0.1 with the certificate in `dir` (`server.crt`, `server.key`).
fn start_etcd(dir: &std::path::Path) -> anyhow::Result<(Child, u16)> {
    let (client_port, peer_port) = (free_port()?, free_port()?);
    let client_url = format!("https://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let process = std::process::Command::new("etcd")
        .args(["--name", "bench", "--data-dir"])
        .arg(dir.join("etcd"))
        .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("bench={peer_url}"), "--log-level", "error"])
        .arg("--cert-file").arg(dir.join("server.crt"))
        .arg("--key-file").arg(dir.join("server.key"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting etcd: {e} (install Debian's etcd-server)"))?;
    Ok((Child(process), client_port))
}

pub async fn run(quick: bool, connections: usize) -> anyhow::Result<Vec<Row>> {
    let count = if quick { 20 } else { connections };
    let dir = tempfile::tempdir()?;
    let certs = skiff_apiserver::tls::load_or_create(dir.path(), &["127.0.0.1".to_string()])?;
    std::fs::write(dir.path().join("server.crt"), &certs.cert_pem)?;
    skiff_apiserver::tls::write_private(&dir.path().join("server.key"), &certs.key_pem)?;
    let (admin_cert, admin_key) = skiff_apiserver::tls::admin_certificate(dir.path())?;

    // The API server over a fresh store, with its TLS listener.
    let store: Arc<dyn skiff_store::Store> = Arc::new(skiff_store::RedbStore::open(&dir.path().join("db"), skiff_store::StoreOptions::default())?);
    let server = skiff_apiserver::ApiServer::new(store, skiff_apiserver::Config::new("bench-token".into()));
    server.bootstrap(([127, 0, 0, 1], 6443).into()).await.map_err(|e| anyhow::anyhow!(e.message))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api_port = listener.local_addr()?.port();
    let router = skiff_apiserver::router(server);
    let serving = tokio::spawn(async move { skiff_apiserver::tls::serve(listener, router, &certs, std::future::pending()).await });

    let (_etcd, etcd_port) = start_etcd(dir.path())?;
    let plain = connector(&std::fs::read_to_string(dir.path().join("ca.crt"))?, None)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while once(etcd_port, &plain, "/version", &Credential::None).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "etcd did not answer over TLS");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    println!("handshake bench: new connection, TLS 1.3 handshake, first GET ({})", crate::report::machine());
    println!("| path | connections | handshake p50 ms | p99 ms | first answer p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|");
    let list = "/api/v1/namespaces/default/configmaps?limit=1";
    let etcd = measure("etcd GET /version (reference)", count, etcd_port, &plain, "/version", &Credential::None).await?;
    let token = measure("API server GET configmaps, bearer token", count, api_port, &plain, list, &Credential::Token("bench-token".into())).await?;
    let with_cert = connector(&std::fs::read_to_string(dir.path().join("ca.crt"))?, Some((&admin_cert, &admin_key)))?;
    let cert = measure("API server GET configmaps, client certificate", count, api_port, &with_cert, list, &Credential::Certificate).await?;
    serving.abort();

    let figure = |f: (Duration, Duration, Duration, Duration)| format!("p50 {:.2} ms, p99 {:.2} ms (handshake p50 {:.2} ms)", ms(f.2), ms(f.3), ms(f.0));
    let reference = format!("etcd over TLS, GET /version, same run: {}", figure(etcd));
    Ok(vec![
        Row::new("TLS handshake + first request, bearer token", figure(token), reference.clone(), Some(ms(token.2) / ms(etcd.2))),
        Row::new("TLS handshake + first request, client certificate", figure(cert), reference, Some(ms(cert.2) / ms(etcd.2))),
    ])
}
