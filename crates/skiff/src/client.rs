//! The kubectl-like client commands. They speak plain Kubernetes REST through kube-rs, so
//! they work against Skiff or any Kubernetes cluster; kinds resolve through the registry
//! of `skiff-core` (plural, singular, short name or Kind).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use futures::{AsyncBufReadExt, StreamExt};
use http::{Method, Request};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};
use skiff_core::{ResourceType, resources};

use crate::print;

#[derive(clap::Args, Clone)]
pub struct TargetArgs {
    /// Kubeconfig file (default: $KUBECONFIG, then the one `skiff up` wrote).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// Namespace (default: the kubeconfig context's, else `default`).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// Across all namespaces.
    #[arg(short = 'A', long = "all-namespaces", global = true)]
    all_namespaces: bool,
}

/// A client of one cluster, in one namespace.
pub struct Session {
    pub client: kube::Client,
    pub namespace: String,
    /// What the server said of itself when the session checked that it answers.
    pub server_version: k8s_openapi::apimachinery::pkg::version::Info,
    all_namespaces: bool,
}

impl Session {
    /// Connects to the cluster the kubeconfig names, and checks that it answers, so a
    /// cluster that is not running is said plainly rather than as a transport error.
    pub async fn connect(args: &TargetArgs) -> anyhow::Result<Session> {
        let config = kube_config(args.kubeconfig.clone()).await?;
        let namespace = args.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
        let server = config.cluster_url.to_string();
        let client = kube::Client::try_from(config)?;
        let server_version = client.apiserver_version().await.map_err(|e| match e {
            kube::Error::Api(s) => anyhow!("the API server at {server} refused us: {} ({})", s.message, s.reason),
            other => anyhow!("cannot reach the cluster's API server at {server}: {other}. Is the cluster running? `skiff up` starts one"),
        })?;
        Ok(Session { client, namespace, server_version, all_namespaces: args.all_namespaces })
    }
}

/// Client configuration from a kubeconfig: the one given, else $KUBECONFIG, else the
/// one `skiff up` wrote.
pub async fn kube_config(kubeconfig: Option<PathBuf>) -> anyhow::Result<kube::Config> {
    let path = kubeconfig
        .or_else(|| std::env::var_os("KUBECONFIG").map(PathBuf::from))
        .unwrap_or_else(|| crate::default_data_dir().join("kubeconfig"));
    if !path.exists() {
        // In a pod (the agent as a DaemonSet of charts/skiff): its ServiceAccount's.
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
            return kube::Config::incluster().context("using the pod's ServiceAccount (in-cluster config)");
        }
        bail!("no kubeconfig at {}: start a cluster with `skiff up` (it writes one there), or give --kubeconfig or $KUBECONFIG", path.display());
    }
    let kubeconfig = Kubeconfig::read_from(&path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await
        .with_context(|| format!("using kubeconfig {}", path.display()))
}

pub fn resolve(kind: &str) -> anyhow::Result<&'static ResourceType> {
    resources::resolve(kind).ok_or_else(|| anyhow!("the server doesn't have a resource type \"{kind}\""))
}

pub fn path(r: &ResourceType, namespace: Option<&str>, name: Option<&str>) -> String {
    let base = if r.group.is_empty() { format!("/api/{}", r.version) } else { format!("/apis/{}/{}", r.group, r.version) };
    let mut p = match (r.namespaced, namespace) {
        (true, Some(ns)) => format!("{base}/namespaces/{ns}/{}", r.plural),
        _ => format!("{base}/{}", r.plural),
    };
    if let Some(n) = name {
        p.push('/');
        p.push_str(n);
    }
    p
}

const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

impl Session {
    fn ns_for(&self, r: &ResourceType, explicit: Option<&str>) -> Option<String> {
        if !r.namespaced || (self.all_namespaces && explicit.is_none()) {
            None
        } else {
            Some(explicit.unwrap_or(&self.namespace).to_string())
        }
    }

    async fn call(&self, method: Method, uri: &str, accept: &str, content_type: &str, body: Option<&Value>) -> Result<Value, kube::Error> {
        let bytes = body.map(|b| serde_json::to_vec(b).expect("json")).unwrap_or_default();
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::ACCEPT, accept)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(bytes)
            .expect("request");
        let text = self.client.request_text(request).await?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn json(&self, method: Method, uri: &str, body: Option<&Value>) -> Result<Value, kube::Error> {
        self.call(method, uri, "application/json", "application/json", body).await
    }
}

pub fn api_message(e: kube::Error) -> anyhow::Error {
    match e {
        kube::Error::Api(s) => anyhow!("{} ({})", s.message, s.reason),
        other => anyhow!(other),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn query(selector: Option<&str>, extra: &str) -> String {
    let mut q = vec![];
    if let Some(s) = selector {
        q.push(format!("labelSelector={}", urlencode(s)));
    }
    if !extra.is_empty() {
        q.push(extra.to_string());
    }
    if q.is_empty() { String::new() } else { format!("?{}", q.join("&")) }
}

pub use skiff_core::urlencode;

pub async fn get(args: &TargetArgs, kind: &str, name: Option<&str>, output: Option<&str>, selector: Option<&str>, watch: bool) -> anyhow::Result<()> {
    let s = Session::connect(args).await?;
    let r = resolve(kind)?;
    let ns = s.ns_for(r, args.namespace.as_deref());
    let uri = path(r, ns.as_deref(), name);
    match output {
        Some("yaml") | Some("json") => {
            let mut v = s.json(Method::GET, &format!("{uri}{}", query(selector, "")), None).await.map_err(api_message)?;
            if name.is_none() {
                v = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": v["items"]});
            }
            print!("{}", if output == Some("yaml") { print::yaml(&v)? } else { print::json(&v)? });
            Ok(())
        }
        None | Some("wide") => {
            let wide = output == Some("wide");
            let ns_column = ns.is_none() && r.namespaced;
            let t = s.call(Method::GET, &format!("{uri}{}", query(selector, "")), TABLE, "application/json", None).await.map_err(api_message)?;
            let empty = t["rows"].as_array().is_none_or(|r| r.is_empty());
            if empty && name.is_none() {
                match &ns {
                    Some(n) => eprintln!("No resources found in {n} namespace."),
                    None => eprintln!("No resources found"),
                }
            } else {
                print!("{}", print::table(&t, wide, ns_column, true));
            }
            if watch {
                let rv = t.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("0").to_string();
                let mut extra = format!("watch=true&resourceVersion={rv}");
                if let Some(n) = name {
                    extra.push_str(&format!("&fieldSelector=metadata.name%3D{n}"));
                }
                let list_uri = path(r, ns.as_deref(), None);
                let request = Request::builder().uri(format!("{list_uri}{}", query(selector, &extra)))
                    .header(http::header::ACCEPT, TABLE).body(Vec::new())?;
                let stream = s.client.request_stream(request).await.map_err(api_message)?;
                let mut lines = stream.lines();
                while let Some(line) = lines.next().await {
                    let event: Value = serde_json::from_str(&line?)?;
                    if event["type"] == "ERROR" {
                        bail!("watch ended: {}", event["object"]["message"]);
                    }
                    if event["type"] != "BOOKMARK" {
                        print!("{}", print::table(&event["object"], wide, ns_column, false));
                    }
                }
            }
            Ok(())
        }
        Some(other) => bail!("unable to match a printer suitable for the output format {other:?}, allowed formats are: json, wide, yaml"),
    }
}

/// Reads manifests from files, directories (their .yaml/.yml/.json files) or `-`.
fn read_manifests(sources: &[String]) -> anyhow::Result<Vec<Value>> {
    let mut texts = Vec::new();
    for src in sources {
        if src == "-" {
            let mut t = String::new();
            std::io::stdin().read_to_string(&mut t)?;
            texts.push(("stdin".to_string(), t));
        } else if Path::new(src).is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(src)?.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json")).collect();
            entries.sort();
            for p in entries {
                texts.push((p.display().to_string(), std::fs::read_to_string(&p)?));
            }
        } else {
            texts.push((src.clone(), std::fs::read_to_string(src).with_context(|| format!("reading {src}"))?));
        }
    }
    let mut docs = Vec::new();
    for (origin, text) in texts {
        let parsed: Vec<Value> = serde_saphyr::from_multiple(&text).map_err(|e| anyhow!("error parsing {origin}: {e}"))?;
        for doc in parsed.into_iter().filter(|d| !d.is_null()) {
            if doc["kind"] == "List" {
                docs.extend(doc["items"].as_array().cloned().unwrap_or_default());
            } else {
                docs.push(doc);
            }
        }
    }
    Ok(docs)
}

fn doc_resource(doc: &Value) -> anyhow::Result<&'static ResourceType> {
    let (av, kind) = (doc["apiVersion"].as_str().unwrap_or_default(), doc["kind"].as_str().unwrap_or_default());
    if av.is_empty() || kind.is_empty() {
        bail!("a document is missing apiVersion or kind");
    }
    resources::find_by_kind(av, kind).ok_or_else(|| anyhow!("no matches for kind \"{kind}\" in version \"{av}\""))
}

fn display(r: &ResourceType, name: &str) -> String {
    if r.group.is_empty() { format!("{}/{name}", r.singular) } else { format!("{}.{}/{name}", r.singular, r.group) }
}

pub async fn apply(args: &TargetArgs, files: &[String]) -> anyhow::Result<()> {
    let s = Session::connect(args).await?;
    for doc in read_manifests(files)? {
        let r = doc_resource(&doc)?;
        let name = doc.pointer("/metadata/name").and_then(Value::as_str).ok_or_else(|| anyhow!("a {} has no metadata.name", r.kind))?.to_string();
        let ns = s.ns_for(r, doc.pointer("/metadata/namespace").and_then(Value::as_str).or(args.namespace.as_deref()));
        let ns = if r.namespaced { ns.or_else(|| Some(s.namespace.clone())) } else { None };
        match s.json(Method::GET, &path(r, ns.as_deref(), Some(&name)), None).await {
            Err(e) if is_not_found(&e) => {
                s.json(Method::POST, &path(r, ns.as_deref(), None), Some(&doc)).await.map_err(api_message)?;
                println!("{} created", display(r, &name));
            }
            Err(e) => return Err(api_message(e)),
            Ok(live) => {
                let patched = s.call(Method::PATCH, &path(r, ns.as_deref(), Some(&name)), "application/json",
                    "application/strategic-merge-patch+json", Some(&doc)).await.map_err(api_message)?;
                let changed = live.pointer("/metadata/resourceVersion") != patched.pointer("/metadata/resourceVersion");
                println!("{} {}", display(r, &name), if changed { "configured" } else { "unchanged" });
            }
        }
    }
    Ok(())
}

pub async fn describe(args: &TargetArgs, kind: &str, name: &str) -> anyhow::Result<()> {
    let s = Session::connect(args).await?;
    let r = resolve(kind)?;
    let ns = if r.namespaced { Some(args.namespace.clone().unwrap_or_else(|| s.namespace.clone())) } else { None };
    let o = s.json(Method::GET, &path(r, ns.as_deref(), Some(name)), None).await.map_err(api_message)?;
    let m = &o["metadata"];
    let map_lines = |v: &Value| -> String {
        match v.as_object() {
            Some(m) if !m.is_empty() => m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join("\n             "),
            _ => "<none>".into(),
        }
    };
    println!("Name:        {name}");
    if let Some(n) = &ns {
        println!("Namespace:   {n}");
    }
    println!("Labels:      {}", map_lines(&m["labels"]));
    println!("Annotations: {}", map_lines(&m["annotations"]));
    println!("Created:     {}", m["creationTimestamp"].as_str().unwrap_or_default());
    for section in ["spec", "status", "data", "subsets"] {
        if let Some(v) = o.get(section).filter(|v| !v.is_null()) {
            let mut title = section.to_string();
            title[..1].make_ascii_uppercase();
            println!("{title}:");
            for line in print::yaml(v)?.lines() {
                println!("  {line}");
            }
        }
    }
    let mut selector = format!("involvedObject.name={name}");
    if let Some(n) = &ns {
        selector.push_str(&format!(",involvedObject.namespace={n}"));
    }
    let events_uri = format!("{}?fieldSelector={}", path(resolve("events")?, ns.as_deref(), None), urlencode(&selector));
    let events = s.json(Method::GET, &events_uri, None).await.map_err(api_message)?;
    let items = events["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        println!("Events:      <none>");
    } else {
        println!("Events:");
        let mut rows = vec![vec!["Type".to_string(), "Reason".into(), "From".into(), "Message".into()]];
        for e in items {
            rows.push(vec![e["type"].as_str().unwrap_or_default().into(), e["reason"].as_str().unwrap_or_default().into(),
                e.pointer("/source/component").and_then(Value::as_str).unwrap_or_default().into(), e["message"].as_str().unwrap_or_default().into()]);
        }
        for line in print::align(&rows).lines() {
            println!("  {line}");
        }
    }
    Ok(())
}

pub async fn delete(args: &TargetArgs, kind: Option<&str>, names: &[String], files: &[String]) -> anyhow::Result<()> {
    let s = Session::connect(args).await?;
    let mut targets: Vec<(&'static ResourceType, Option<String>, String)> = Vec::new();
    if !files.is_empty() {
        for doc in read_manifests(files)? {
            let r = doc_resource(&doc)?;
            let name = doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
            let ns = r.namespaced.then(|| doc.pointer("/metadata/namespace").and_then(Value::as_str).map(String::from).unwrap_or_else(|| s.namespace.clone()));
            targets.push((r, ns, name));
        }
    } else {
        let kind = kind.ok_or_else(|| anyhow!("you must provide a kind and names, or -f FILE"))?;
        // `kind/name` form, as kubectl takes.
        let (kind, first) = match kind.split_once('/') {
            Some((k, n)) => (k, Some(n.to_string())),
            None => (kind, None),
        };
        let r = resolve(kind)?;
        let all: Vec<String> = first.into_iter().chain(names.iter().cloned()).collect();
        if all.is_empty() {
            bail!("resource(s) were provided, but no name was specified");
        }
        for n in all {
            targets.push((r, r.namespaced.then(|| args.namespace.clone().unwrap_or_else(|| s.namespace.clone())), n));
        }
    }
    let mut failed = false;
    for (r, ns, name) in targets {
        match s.json(Method::DELETE, &path(r, ns.as_deref(), Some(&name)), None).await {
            Ok(_) => println!("{} \"{name}\" deleted", if r.group.is_empty() { r.singular.to_string() } else { format!("{}.{}", r.singular, r.group) }),
            Err(e) => {
                eprintln!("Error from server: {}", api_message(e));
                failed = true;
            }
        }
    }
    if failed { bail!("some objects were not deleted") } else { Ok(()) }
}

pub async fn create_namespace(args: &TargetArgs, name: &str) -> anyhow::Result<()> {
    let s = Session::connect(args).await?;
    let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    s.json(Method::POST, "/api/v1/namespaces", Some(&body)).await.map_err(api_message)?;
    println!("namespace/{name} created");
    Ok(())
}
