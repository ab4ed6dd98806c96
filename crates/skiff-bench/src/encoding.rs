//! `encoding`: the same API work in JSON and in protobuf, side by side in one run — pod
//! creates through the API server's HTTP path (16 clients), and lists of 1,000 pods read
//! back whole, timed and sized. Protobuf is what kubectl's typed commands, client-go and
//! controller-runtime use; JSON is the reference.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

use crate::{drive, report};

const PROTOBUF: &str = skiff_apiserver::protobuf::MEDIA_TYPE;

/// A pod as a Deployment's template makes one: labels, an owner, a container with ports,
/// env, resources and a probe.
fn pod(i: usize) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("web-{i}"), "namespace": "default",
        "labels": {"app": "web", "pod-template-hash": "6d4cf56db6"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-6d4cf56db6", "uid": "3f1c2a9e-0d4b-4c1e-9f8a-5b6c7d8e9f00", "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"containers": [{"name": "web", "image": "registry.skiff.internal/http-hello:v1",
            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
            "env": [{"name": "MODE", "value": "blue"}, {"name": "INDEX", "value": i.to_string()}],
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5}}],
            "runtimeClassName": "wasmtime"}})
}

fn body(encoding: &str, i: usize) -> anyhow::Result<Bytes> {
    Ok(Bytes::from(if encoding == PROTOBUF {
        skiff_apiserver::protobuf::encode(&pod(i)).map_err(|e| anyhow::anyhow!(e))?
    } else {
        serde_json::to_vec(&pod(i))?
    }))
}

/// The codecs alone, on a list of `size` pods as the server holds it (a JSON tree):
/// (what, serde_json's time, protobuf's time), each the best of `rounds`.
fn codec_alone(size: usize, rounds: usize) -> anyhow::Result<Vec<(&'static str, Duration, Duration)>> {
    let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"},
        "items": (0..size).map(|i| {
            let mut p = pod(i);
            p["metadata"]["creationTimestamp"] = json!("2026-01-02T03:04:05Z");
            p["metadata"]["uid"] = json!(format!("3f1c2a9e-0d4b-4c1e-9f8a-{i:012}"));
            p
        }).collect::<Vec<_>>()});
    let best = |f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<Duration> {
        let mut best = Duration::MAX;
        for _ in 0..rounds {
            let t = Instant::now();
            f()?;
            best = best.min(t.elapsed());
        }
        Ok(best)
    };
    let json_bytes = serde_json::to_vec(&list)?;
    let proto_bytes = skiff_apiserver::protobuf::encode(&list).map_err(|e| anyhow::anyhow!(e))?;
    let json_encode = best(&mut || { std::hint::black_box(serde_json::to_vec(&list)?); Ok(()) })?;
    let proto_encode = best(&mut || { std::hint::black_box(skiff_apiserver::protobuf::encode(&list).map_err(|e| anyhow::anyhow!(e))?); Ok(()) })?;
    let json_decode = best(&mut || { std::hint::black_box(serde_json::from_slice::<serde_json::Value>(&json_bytes)?); Ok(()) })?;
    let proto_decode = best(&mut || { std::hint::black_box(skiff_apiserver::protobuf::decode(&proto_bytes)?); Ok(()) })?;
    Ok(vec![("encode", json_encode, proto_encode), ("decode", json_decode, proto_decode)])
}

pub async fn run(quick: bool, creates: usize, list_size: usize, lists: usize) -> anyhow::Result<Vec<report::Row>> {
    let (creates, list_size, lists) = if quick { (200, 100, 5) } else { (creates, list_size, lists) };
    let (addr, serving, _dir) = crate::serve_api(crate::ApiMode::AS_SERVED).await?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(64).build_http();

    let mut creates_rows = Vec::new();
    for (offset, (label, encoding)) in [("JSON", "application/json"), ("protobuf", PROTOBUF)].into_iter().enumerate() {
        let client = client.clone();
        let url = format!("http://{addr}/api/v1/namespaces/default/pods");
        // Each encoding creates its own pods (names offset), into the same-sized store.
        let base = offset * creates;
        let figures = drive(&format!("pod creates, {label}"), 16, creates, move |i| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let req = http::Request::post(&url)
                    .header("Authorization", "Bearer bench-token")
                    .header("Content-Type", encoding)
                    .header("Accept", encoding)
                    .body(Full::new(body(encoding, base + i)?))?;
                let resp = client.request(req).await?;
                let status = resp.status();
                let bytes = resp.into_body().collect().await?.to_bytes();
                anyhow::ensure!(status == 201, "create answered {status}: {}", String::from_utf8_lossy(&bytes));
                Ok(())
            }
        })
        .await?;
        creates_rows.push(figures);
    }

    // Lists of `list_size` pods, in a namespace of their own.
    let url = format!("http://{addr}/api/v1/namespaces/listed/pods");
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "listed"}});
    // The namespace, and its `default` ServiceAccount (no controllers run here to make it).
    let account = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}});
    for (path, object) in [("namespaces", &ns), ("namespaces/listed/serviceaccounts", &account)] {
        let req = http::Request::post(format!("http://{addr}/api/v1/{path}")).header("Authorization", "Bearer bench-token")
            .header("Content-Type", "application/json").body(Full::new(Bytes::from(serde_json::to_vec(object)?)))?;
        client.request(req).await?.into_body().collect().await?;
    }
    {
        let (client, url) = (client.clone(), url.clone());
        drive("fill", 16, list_size, move |i| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let mut p = pod(i);
                p["metadata"]["namespace"] = json!("listed");
                let req = http::Request::post(&url).header("Authorization", "Bearer bench-token")
                    .header("Content-Type", "application/json").body(Full::new(Bytes::from(serde_json::to_vec(&p)?)))?;
                let resp = client.request(req).await?;
                anyhow::ensure!(resp.status() == 201, "fill answered {}", resp.status());
                resp.into_body().collect().await?;
                Ok(())
            }
        })
        .await?;
    }
    let mut list_rows = Vec::new();
    for (label, accept) in [("JSON", "application/json"), ("protobuf", PROTOBUF)] {
        let mut latencies = Vec::new();
        let mut size = 0;
        for _ in 0..lists {
            let req = http::Request::get(&url).header("Authorization", "Bearer bench-token").header("Accept", accept).body(Full::new(Bytes::new()))?;
            let t = Instant::now();
            let resp = client.request(req).await?;
            let ctype = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            let bytes = resp.into_body().collect().await?.to_bytes();
            latencies.push(t.elapsed());
            anyhow::ensure!(ctype.starts_with(accept), "asked for {accept}, answered {ctype}");
            size = bytes.len();
        }
        latencies.sort();
        list_rows.push((label, report::percentile(&latencies, 0.5), size));
    }
    serving.abort();
    let codec = codec_alone(list_size, if quick { 3 } else { 30 })?;

    println!("encoding bench: JSON against protobuf through the API server ({})", report::machine());
    println!("| operation | encoding | count | per second | p50 ms | p99 ms | bytes |");
    println!("|---|---|---|---|---|---|---|");
    for f in &creates_rows {
        println!("| pod creates, 16 clients | {} | {} | {:.0} | {:.2} | {:.2} | |", f.what.trim_start_matches("pod creates, "), f.ops, f.rate(),
            f.percentile(0.5).as_secs_f64() * 1e3, f.percentile(0.99).as_secs_f64() * 1e3);
    }
    for (label, p50, size) in &list_rows {
        println!("| list {list_size} pods | {label} | {lists} | | {:.2} | | {size} |", p50.as_secs_f64() * 1e3);
    }
    for (what, json_time, proto_time) in &codec {
        println!("| {what} {list_size} pods, codec alone | JSON (serde_json) / protobuf | | | {:.2} / {:.2} | | |", json_time.as_secs_f64() * 1e3, proto_time.as_secs_f64() * 1e3);
    }
    let [json_creates, proto_creates] = creates_rows.as_slice() else { unreachable!("two encodings") };
    let [(_, json_list, json_size), (_, proto_list, proto_size)] = list_rows.as_slice() else { unreachable!("two encodings") };
    let ms = |d: &Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    Ok(vec![
        report::Row::new("pod creates/s, 16 clients, protobuf bodies",
            format!("{}/s, p99 {}", report::thousands(proto_creates.rate()), ms(&proto_creates.percentile(0.99))),
            format!("JSON, same run: {}/s", report::thousands(json_creates.rate())), Some(proto_creates.rate() / json_creates.rate())),
        report::Row::new(format!("list of {list_size} pods, protobuf (p50, size)"), format!("{}, {} KiB", ms(proto_list), proto_size / 1024),
            format!("JSON, same run: {}, {} KiB", ms(json_list), json_size / 1024), Some(json_list.as_secs_f64() / proto_list.as_secs_f64())),
    ])
}
