//! The pod worker: one task per pod bound to the node. It prepares the pod's volumes,
//! runs its init containers in order and then its containers, each restarted under the
//! pod's `restartPolicy` with kubelet's crash-loop back-off; it writes the pod's status
//! as things change, enforces `activeDeadlineSeconds`, and on deletion stops the
//! containers and finishes the deletion.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Probe};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::ResourceExt;
use oci_client::secrets::RegistryAuth;
use skiff_client::events::EventType;
use tokio::sync::{Notify, watch};

use crate::Agent;
use crate::env::ConfigError;
use crate::images::{PullError, PullPolicy};
use crate::exec::ExecTarget;
use crate::runtime::AbortOnDrop;
use crate::runtime::{Exec, Exit, Launch, Prepared, Usage};
use crate::status::{ContainerState, PodState, State, Terminated, crash_backoff};
use crate::volumes::{self, VolumeDir};

/// A container that ran this long has its crash-loop back-off reset.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);
/// Image pull back-off: 10 s doubling to 5 min, as kubelet.
const PULL_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How often configMap, secret and downwardAPI volume files are brought up to date.
const VOLUME_REFRESH: Duration = Duration::from_secs(2);

/// The worker's shared view of its pod.
struct Shared {
    node: Arc<Agent>,
    pod: watch::Receiver<Arc<Pod>>,
    state: Mutex<PodState>,
    changed: Notify,
    /// Set by the status writer after each write.
    written: AtomicBool,
    /// Set when the pod is being deleted and its preStop hooks have run: its containers'
    /// SIGTERM (HTTP functions stop taking connections and finish what they serve).
    terminate: watch::Sender<bool>,
    /// When this agent first saw the pod; taken when all its containers first run, for
    /// the pod start metric.
    seen: Mutex<Option<Instant>>,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut PodState)) {
        let mut state = self.state.lock().unwrap();
        f(&mut state);
        if state.containers.iter().all(|c| matches!(c.state, State::Running { .. }))
            && let Some(seen) = self.seen.lock().unwrap().take()
        {
            crate::metrics::pod_started(state.containers.first().map_or(crate::runtime::WASM_HANDLER, |c| c.runtime), seen.elapsed());
        }
        drop(state);
        self.changed.notify_one();
    }

    fn pod(&self) -> Arc<Pod> {
        self.pod.borrow().clone()
    }
}

/// Runs the pod until it is deleted (or the worker is aborted because the pod is gone).
pub async fn run(node: Arc<Agent>, pod: watch::Receiver<Arc<Pod>>) {
    let first = pod.borrow().clone();
    let uid = first.uid().unwrap_or_default();
    let state = PodState::new(&first, &node.config.node_ip);
    let shared = Arc::new(Shared {
        node: node.clone(),
        pod,
        state: Mutex::new(state),
        changed: Notify::new(),
        written: AtomicBool::new(false),
        terminate: watch::Sender::new(false),
        seen: Mutex::new(Some(Instant::now())),
    });
    let writer = AbortOnDrop(tokio::spawn(write_status(shared.clone())));
    let _unready_when_gone = UnreadyWhenGone(node.clone(), uid.clone());
    shared.changed.notify_one();
    let terminal_at_start = shared.state.lock().unwrap().is_terminal() || skiff_client::pods::is_terminal(&first);
    if !terminal_at_start {
        let mut pod_rx = shared.pod.clone();
        let run = run_pod(shared.clone());
        tokio::pin!(run);
        tokio::select! {
            _ = &mut run => {}
            _ = deadline(shared.clone()) => {
                shared.update(|s| {
                    stop_all(s, "DeadlineExceeded");
                    s.forced = Some(("Failed".into(), "DeadlineExceeded".into(), "Pod was active on the node longer than the specified deadline".into()));
                });
                node.recorder.record(&*shared.pod(), EventType::Normal, "DeadlineExceeded", "Pod was active on the node longer than the specified deadline");
            }
            // The containers keep running (and serving) while their preStop hooks run; then
            // they are told to stop, and have what is left of the grace period to.
            deadline = async {
                let _ = pod_rx.wait_for(|p| p.metadata.deletion_timestamp.is_some()).await;
                let deadline = tokio::time::Instant::now() + grace_period(&shared.pod());
                let _ = tokio::time::timeout_at(deadline, pre_stop(&shared)).await;
                deadline
            } => {
                shared.terminate.send_replace(true);
                tokio::select! {
                    _ = &mut run => {}
                    _ = none_running(&shared) => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
        }
    }
    // Finished, or being deleted: wait for deletion; then every container is stopped
    // (the running ones were dropped above, which aborts their guests).
    let mut pod_rx = shared.pod.clone();
    let _ = pod_rx.wait_for(|p| p.metadata.deletion_timestamp.is_some()).await;
    shared.update(|s| stop_all(s, "Killing"));
    wait_written(&shared).await;
    drop(writer);
    let pod = shared.pod();
    let api: Api<Pod> = Api::namespaced(node.client.clone(), &pod.namespace().unwrap_or_default());
    let dp = DeleteParams { grace_period_seconds: Some(0), preconditions: Some(Preconditions { uid: Some(uid.clone()), resource_version: None }), ..Default::default() };
    match api.delete(&pod.name_any(), &dp).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(e) => tracing::warn!(pod = %pod.name_any(), error = %e, "finishing the pod's deletion"),
    }
}

/// Takes the pod out of the node's ready pods when its worker ends (or is aborted).
struct UnreadyWhenGone(Arc<Agent>, String);

impl Drop for UnreadyWhenGone {
    fn drop(&mut self) {
        self.0.config.ready_pods.set(&self.1, None);
    }
}

/// Resolves once no container of the pod runs (those waiting to restart never will).
async fn none_running(shared: &Shared) {
    while shared.state.lock().unwrap().containers.iter().any(|c| c.is_running()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long the pod has to stop once deleted.
fn grace_period(pod: &Pod) -> Duration {
    let seconds = pod.metadata.deletion_grace_period_seconds.or_else(|| pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds)).unwrap_or(30);
    Duration::from_secs(seconds.max(0) as u64)
}

/// Runs the preStop hooks of the running containers, together (the caller bounds them by
/// the grace period).
async fn pre_stop(shared: &Arc<Shared>) {
    let pod = shared.pod();
    let running: Vec<String> = shared.state.lock().unwrap().containers.iter().filter(|c| c.is_running()).map(|c| c.name.clone()).collect();
    let pod_ip = shared.node.pod_ip(&pod);
    let hooks = pod.spec.iter().flat_map(|s| s.containers.iter())
        .filter(|c| running.contains(&c.name))
        .filter_map(|c| c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()).map(|h| (c, h)))
        .map(|(c, hook)| {
            let pod_ip = pod_ip.clone();
            let pod = pod.clone();
            let exec = shared.node.exec.get(&pod.namespace().unwrap_or_default(), &pod.name_any(), &c.name).map(|t| t.exec);
            async move {
                if let crate::probes::Outcome::Failure(m) = crate::probes::run_hook(hook, c, &pod_ip, exec.as_ref()).await {
                    shared.node.recorder.record(&*pod, EventType::Warning, "FailedPreStopHook", format!("PreStopHook failed for container {}: {m}", c.name));
                }
            }
        });
    futures::future::join_all(hooks).await;
}

/// Marks every container that has not ended as ended by the agent.
fn stop_all(s: &mut PodState, why: &str) {
    for c in s.init.iter_mut().chain(s.containers.iter_mut()) {
        let started_at = match &c.state {
            State::Terminated(_) => continue,
            State::Running { started_at } => Some(started_at.clone()),
            State::Waiting { .. } => None,
        };
        c.state = State::Terminated(Terminated {
            exit_code: 137,
            reason: "Error".into(),
            message: Some(format!("stopped by the node agent ({why})")),
            started_at,
            finished_at: skiff_client::now(),
        });
    }
    s.sandbox_ready = false;
}

/// Resolves when the pod's `activeDeadlineSeconds` has passed since it started.
async fn deadline(shared: Arc<Shared>) {
    let mut pod_rx = shared.pod.clone();
    loop {
        let seconds = pod_rx.borrow().spec.as_ref().and_then(|s| s.active_deadline_seconds);
        let Some(seconds) = seconds else {
            if pod_rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            continue;
        };
        let started = shared.state.lock().unwrap().start_time.clone();
        let left = seconds - skiff_client::seconds_since(&started);
        if left <= 0 {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(left as u64)) => {}
            r = pod_rx.changed() => if r.is_err() { std::future::pending::<()>().await },
        }
    }
}

/// Writes the pod's status each time it changes, coalescing bursts.
async fn write_status(shared: Arc<Shared>) {
    let pod = shared.pod();
    let api: Api<Pod> = Api::namespaced(shared.node.client.clone(), &pod.namespace().unwrap_or_default());
    let name = pod.name_any();
    let uid = pod.uid().unwrap_or_default();
    loop {
        shared.changed.notified().await;
        let (status, serving_at) = {
            let mut state = shared.state.lock().unwrap();
            (state.to_status(), state.serving_at())
        };
        // The node's proxy hears first: a connection it holds for this pod's Service
        // need not wait for this write and the EndpointSlice after it.
        let pod = shared.pod();
        let serving = serving_at.filter(|_| pod.metadata.deletion_timestamp.is_none());
        shared.node.config.ready_pods.set(&uid, serving.map(|ip| (pod.as_ref(), ip)));
        let mut delay = Duration::from_millis(100);
        loop {
            match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&serde_json::json!({"status": status}))).await {
                Ok(_) => break,
                Err(kube::Error::Api(s)) if s.code == 404 => return,
                Err(e) => {
                    tracing::warn!(pod = %name, error = %e, "writing pod status");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        shared.written.store(true, Ordering::SeqCst);
    }
}

/// Gives the status writer a moment to write the last change before the pod goes.
async fn wait_written(shared: &Shared) {
    shared.written.store(false, Ordering::SeqCst);
    shared.changed.notify_one();
    for _ in 0..50 {
        if shared.written.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Says why containers that have not started yet wait (kubelet's ContainerCreating).
fn set_creating(s: &mut PodState, message: &str) {
    for c in s.init.iter_mut().chain(s.containers.iter_mut()).filter(|c| matches!(c.state, State::Waiting { .. })) {
        c.state = State::Waiting { reason: "ContainerCreating".into(), message: Some(message.to_string()) };
    }
}

async fn run_pod(shared: Arc<Shared>) {
    let node = shared.node.clone();
    let pod = shared.pod();
    // The pod's address first (kubelet's sandbox), then its volumes: until both are
    // ready no container starts (ContainerCreating).
    let ip = loop {
        match node.assign_pod_ip(&pod) {
            Ok(ip) => break ip,
            Err(e) => {
                let message = format!("Failed to create pod sandbox: {e}");
                node.recorder.record(&*pod, EventType::Warning, "FailedCreatePodSandBox", message.clone());
                shared.update(|s| set_creating(s, &message));
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
    };
    shared.update(|s| s.pod_ip = ip);
    node.sources.listed_for(&pod).await;
    let volumes = loop {
        let facts = node.facts(&pod);
        match volumes::prepare(&node.client, &node.volumes, &facts, &node.sources, &node.tokens).await {
            Ok(v) => break Arc::new(v),
            Err(e) => {
                node.recorder.record(&*pod, EventType::Warning, "FailedMount", e.0.clone());
                shared.update(|s| set_creating(s, &e.0));
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    shared.update(|s| s.sandbox_ready = true);
    let refresher = volumes::has_projected(&pod).then(|| {
        let (shared, volumes) = (shared.clone(), volumes.clone());
        AbortOnDrop(tokio::spawn(async move {
            let node = &shared.node;
            // What the files were last written from; nothing to rewrite while it holds.
            let mut written = None;
            loop {
                tokio::time::sleep(VOLUME_REFRESH).await;
                let pod = shared.pod();
                let renewed = node.tokens.renew(&pod).await.unwrap_or_else(|e| {
                    tracing::warn!(pod = %pod.name_any(), error = %e.0, "renewing a ServiceAccount token");
                    false
                });
                let now = Some((node.sources.changes_seen(), pod.resource_version()));
                if renewed || now != written {
                    volumes::refresh(&volumes, &node.facts(&pod), &node.sources, &node.tokens);
                    written = now;
                }
            }
        }))
    });
    // The containers alone, not the whole spec or this version of the pod: a pod object
    // (its volumes most: a k8s-openapi Volume is 3 KiB before any content) held for the
    // pod's life by every worker is a large part of an idle pod's cost.
    let spec = pod.spec.as_ref().map(|s| PodSpec { init_containers: s.init_containers.clone(), containers: s.containers.clone(), ..Default::default() }).unwrap_or_default();
    drop(pod);
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        if shared.state.lock().unwrap().init[i].succeeded() {
            continue; // done before an agent restart
        }
        let exit = run_container(&shared, &volumes, c, Slot::Init(i)).await;
        if exit.code != 0 {
            return; // the pod failed (restartPolicy Never); its status says so
        }
    }
    let containers = spec.containers.iter().enumerate().map(|(i, c)| run_container(&shared, &volumes, c, Slot::App(i)));
    futures::future::join_all(containers).await;
    drop(refresher);
}

#[derive(Clone, Copy)]
enum Slot {
    Init(usize),
    App(usize),
}

fn slot(s: &mut PodState, slot: Slot) -> &mut ContainerState {
    match slot {
        Slot::Init(i) => &mut s.init[i],
        Slot::App(i) => &mut s.containers[i],
    }
}

/// Runs one container until it ends for good under the restart policy (init containers
/// restart on failure unless the policy is Never).
async fn run_container(shared: &Arc<Shared>, volumes: &HashMap<String, VolumeDir>, container: &Container, at: Slot) -> Exit {
    let node = &shared.node;
    let usage = Arc::new(Usage::default());
    let pod = shared.pod();
    let uid = pod.uid().unwrap_or_default();
    node.track_usage(&pod, &container.name, usage.clone());
    let restarts = |s: &PodState, code: i32| match at {
        Slot::Init(_) => s.restart_policy != "Never" && code != 0,
        Slot::App(_) => s.restarts(code),
    };
    // A run that outlived an agent restart is adopted as it is; one that did not is over.
    let mut adopted = node.runtimes.adopt(&uid, &container.name);
    if adopted.is_none() {
        shared.update(|s| slot(s, at).end_lost_run());
    }
    // A container that ended before an agent restart: done, or to be restarted.
    let previous = match &slot(&mut shared.state.lock().unwrap(), at).state {
        State::Terminated(t) => Some(Exit { code: t.exit_code, reason: "Error", message: t.message.clone() }),
        _ => None,
    };
    if let Some(exit) = previous.filter(|_| adopted.is_none()) {
        if !restarts(&shared.state.lock().unwrap(), exit.code) {
            return exit;
        }
        shared.update(|s| {
            let c = slot(s, at);
            if let State::Terminated(t) = &c.state {
                c.last = Some(t.clone());
            }
            c.restart_count += 1;
        });
    }
    let mut pull_backoff = Duration::from_secs(10);
    // Crash-loop back-offs since the last reset; a restarted agent keeps backing off.
    let mut backoffs = run_number(shared, at);
    loop {
        let pod = shared.pod();
        let (prepared, started_at) = match adopted.take() {
            Some(run) => run,
            None => match prepare_or_back_off(shared, at, container, &mut pull_backoff).await {
                Some(prepared) => (prepared, skiff_client::now()),
                None => continue,
            },
        };
        let run_number = run_number(shared, at);
        let launch = match launch(node, &pod, volumes, container, run_number, usage.clone(), shared.terminate.subscribe()) {
            Ok(launch) => launch,
            Err(e) => {
                node.recorder.record(&*pod, EventType::Warning, "Failed", format!("Error: {}", e.0));
                shared.update(|s| slot(s, at).state = State::Waiting { reason: "CreateContainerConfigError".into(), message: Some(e.0.clone()) });
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        // This version of the pod is not kept while the container runs (the worker's
        // channel has the latest): each version is a whole pod object.
        drop(pod);
        let log = launch.log.clone();
        let started = Instant::now();
        let exit = match run_once(shared, at, container, prepared.as_ref(), launch, run_number, &started_at).await {
            Ok(exit) => exit,
            Err(start) => {
                // Could not start (bad imports, no _start, a mount failed): kubelet's
                // CreateContainerError, retried with back-off.
                log.note(&format!("container could not start: {}", start.0));
                node.recorder.record(&*shared.pod(), EventType::Warning, "Failed", format!("Error: {}", start.0));
                shared.update(|s| slot(s, at).state = State::Waiting { reason: "CreateContainerError".into(), message: Some(start.0.clone()) });
                tokio::time::sleep(pull_backoff).await;
                pull_backoff = (pull_backoff * 2).min(PULL_BACKOFF_MAX);
                continue;
            }
        };
        if let Some(m) = &exit.message {
            log.note(m);
        }
        let ended = Terminated { exit_code: exit.code, reason: exit.reason.into(), message: exit.message.clone(), started_at: Some(started_at), finished_at: skiff_client::now() };
        shared.update(|s| slot(s, at).state = State::Terminated(ended.clone()));
        // Stopped for the pod's deletion: not restarted.
        if *shared.terminate.borrow() {
            return exit;
        }
        if exit.reason == "OOMKilled" {
            node.recorder.record(&*shared.pod(), EventType::Warning, "OOMKilled", format!("container {} exceeded its memory limit", container.name));
        }
        if !restarts(&shared.state.lock().unwrap(), exit.code) {
            return exit;
        }
        if started.elapsed() >= BACKOFF_RESET_AFTER {
            backoffs = 0;
        }
        let wait = crash_backoff(backoffs);
        backoffs += 1;
        if !wait.is_zero() {
            let pod = shared.pod();
            let message = format!("back-off {}s restarting failed container={} pod={}_{}({uid})", wait.as_secs(), container.name, pod.name_any(), pod.namespace().unwrap_or_default());
            node.recorder.record(&*pod, EventType::Warning, "BackOff", format!("Back-off restarting failed container {} in pod {}", container.name, pod.name_any()));
            shared.update(|s| slot(s, at).state = State::Waiting { reason: "CrashLoopBackOff".into(), message: Some(message) });
            tokio::time::sleep(wait).await;
        }
        shared.update(|s| {
            let c = slot(s, at);
            c.last = Some(ended);
            c.restart_count += 1;
        });
    }
}

/// Readies the container's image for its runtime ([`prepare`]); or reports why not, as
/// kubelet does (`ErrImagePull` then `ImagePullBackOff`, …), and backs off.
async fn prepare_or_back_off(shared: &Arc<Shared>, at: Slot, container: &Container, pull_backoff: &mut Duration) -> Option<Arc<dyn Prepared>> {
    let (node, pod) = (&shared.node, shared.pod());
    match prepare(node, &pod, container).await {
        Ok((prepared, image_id)) => {
            *pull_backoff = Duration::from_secs(10);
            shared.update(|s| {
                let c = slot(s, at);
                c.image_id = image_id;
                c.runtime = prepared.runtime();
            });
            Some(prepared)
        }
        Err(Failure { reason, message }) => {
            node.recorder.record(&*pod, EventType::Warning, if reason == "ErrImagePull" { "Failed" } else { reason }, format!("container {}: {message}", container.name));
            shared.update(|s| slot(s, at).state = State::Waiting { reason: reason.into(), message: Some(message.clone()) });
            if reason == "ErrImagePull" {
                // As kubelet: the error first, then the back-off until the next try.
                let shown = Duration::from_secs(2);
                tokio::time::sleep(shown).await;
                shared.update(|s| slot(s, at).state = State::Waiting { reason: "ImagePullBackOff".into(), message: Some(format!("Back-off pulling image {:?}: {message}", container.image.as_deref().unwrap_or_default())) });
                tokio::time::sleep(pull_backoff.saturating_sub(shown)).await;
            } else {
                tokio::time::sleep(*pull_backoff).await;
            }
            *pull_backoff = (*pull_backoff * 2).min(PULL_BACKOFF_MAX);
            None
        }
    }
}

/// Starts one run of the container and keeps it until it ends, or until a liveness or
/// startup probe ends it: its exit, or why it could not start. While it runs it is
/// reachable by exec and attach, and its status says Running.
async fn run_once(shared: &Arc<Shared>, at: Slot, container: &Container, prepared: &dyn Prepared, launch: Launch, run_number: i32, started_at: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> Result<Exit, crate::runtime::StartError> {
    let node = &shared.node;
    let (uid, namespace, name) = (launch.pod.uid().unwrap_or_default(), launch.pod.namespace().unwrap_or_default(), launch.pod.name_any());
    let pod_ip = node.pod_ip(&launch.pod);
    let output = launch.log.clone();
    let running = prepared.start(launch).await?;
    let _exec = node.exec.register(&namespace, &name, &container.name, ExecTarget { exec: running.exec.clone(), output });
    node.set_running(&uid, &container.name, run_number, true);
    shared.update(|s| slot(s, at).state = State::Running { started_at: started_at.clone() });
    let result = tokio::select! {
        exit = running.exit => exit,
        reason = probe(shared, at, container, pod_ip, running.exec.clone()) => Ok(killed_by_probe(node, &shared.pod(), container, reason)),
    };
    node.set_running(&uid, &container.name, run_number, false);
    result
}

/// Runs the container's probes while it runs (see [`crate::probes`]): readiness sets
/// its `ready`; the future resolves only when a liveness or startup probe has failed,
/// with the reason, and the container must be ended.
async fn probe(shared: &Arc<Shared>, at: Slot, container: &Container, pod_ip: String, exec: Arc<dyn Exec>) -> String {
    use crate::probes::{Outcome, Probes, Timing, Verdict, run_once};
    let probes = Probes::of(container);
    shared.update(|s| {
        let c = slot(s, at);
        c.probe_ready = probes.readiness.as_ref().map(|_| false);
        c.probe_started = probes.startup.as_ref().map(|_| false);
    });
    if let Some(hook) = container.lifecycle.as_ref().and_then(|l| l.post_start.as_ref())
        && let Outcome::Failure(m) = crate::probes::run_hook(hook, container, &pod_ip, Some(&exec)).await
    {
        shared.node.recorder.record(&*shared.pod(), EventType::Warning, "FailedPostStartHook", format!("PostStartHook failed: {m}"));
        return format!("PostStartHook failed: {m}");
    }
    if !probes.any() {
        return std::future::pending().await;
    }
    let unhealthy = |kind: &str, outcome: &Outcome| {
        if let Outcome::Failure(m) = outcome {
            shared.node.recorder.record(&*shared.pod(), EventType::Warning, "Unhealthy", format!("{kind} probe failed: {m}"));
        }
    };
    // Polls one probe until it reaches a verdict, reporting failures as events.
    let until_verdict = |kind: &'static str, p: Probe| {
        let (pod_ip, exec) = (pod_ip.clone(), exec.clone());
        async move {
            let timing = Timing::of(&p);
            let mut verdict = Verdict::default();
            loop {
                let outcome = run_once(&p, container, &pod_ip, Some(&exec), timing.timeout).await;
                unhealthy(kind, &outcome);
                if let Some(v) = verdict.record(&outcome, &timing) {
                    let why = match outcome {
                        Outcome::Failure(m) => m,
                        Outcome::Success => String::new(),
                    };
                    return (v, why, timing);
                }
                tokio::time::sleep(timing.period).await;
            }
        }
    };
    if let Some(p) = probes.startup.clone() {
        tokio::time::sleep(Timing::of(&p).initial_delay).await;
        let (passed, why, _) = until_verdict("Startup", p).await;
        if !passed {
            return format!("Startup probe failed: {why}");
        }
        shared.update(|s| slot(s, at).probe_started = Some(true));
    }
    let liveness = async {
        let Some(p) = probes.liveness.clone() else { return std::future::pending().await };
        tokio::time::sleep(Timing::of(&p).initial_delay).await;
        loop {
            let (alive, why, timing) = until_verdict("Liveness", p.clone()).await;
            if !alive {
                return format!("Liveness probe failed: {why}");
            }
            tokio::time::sleep(timing.period).await;
        }
    };
    let readiness = async {
        let Some(p) = probes.readiness.clone() else { return std::future::pending::<()>().await };
        tokio::time::sleep(Timing::of(&p).initial_delay).await;
        loop {
            let (ready, _, timing) = until_verdict("Readiness", p.clone()).await;
            shared.update(|s| slot(s, at).probe_ready = Some(ready));
            tokio::time::sleep(timing.period).await;
        }
    };
    tokio::select! {
        reason = liveness => reason,
        _ = readiness => unreachable!("readiness probing never ends"),
    }
}

/// The exit of a container ended because a probe failed, as kubelet kills it.
fn killed_by_probe(node: &Agent, pod: &Pod, container: &Container, reason: String) -> Exit {
    node.recorder.record(pod, EventType::Normal, "Killing", format!("Container {} failed {}, will be restarted", container.name, reason.split(':').next().unwrap_or("a probe").to_lowercase()));
    Exit { code: 137, reason: "Error", message: Some(reason) }
}

/// The container's run number: its restart count, which names its log file.
fn run_number(shared: &Shared, at: Slot) -> i32 {
    slot(&mut shared.state.lock().unwrap(), at).restart_count
}

/// Why a container cannot be created yet, as its waiting reason says.
struct Failure {
    reason: &'static str,
    message: String,
}

/// Pulls the container's image (per its policy, with the pod's pull secrets) and readies
/// it for the runtime it needs (Wasm compiled, a container image's layers unpacked).
async fn prepare(node: &Arc<Agent>, pod: &Pod, container: &Container) -> Result<(Arc<dyn Prepared>, String), Failure> {
    let image = container.image.clone().unwrap_or_default();
    if image.is_empty() {
        return Err(Failure { reason: "InvalidImageName", message: "the container has no image".into() });
    }
    let policy = PullPolicy::of(container.image_pull_policy.as_deref(), &image);
    let local = node.images.ensure(&image, policy, async || pull_auth(node, pod, &image).await).await.map_err(|e| Failure { reason: e.reason, message: e.message })?;
    let handler = node.runtime_handler(pod).map_err(|message| Failure { reason: "CreateContainerConfigError", message })?;
    let prepared = node.runtimes.prepare(&node.images, &local, handler.as_deref()).await.map_err(|e| Failure { reason: "CreateContainerError", message: e.0 })?;
    Ok((prepared, format!("{}@{}", local.reference, local.manifest_digest)))
}

/// Registry credentials from the pod's `imagePullSecrets` for the image's registry; else,
/// for the cluster's registry on a node without a credential for it, a token of the pod's
/// ServiceAccount made for that registry.
async fn pull_auth(node: &Agent, pod: &Pod, image: &str) -> Result<RegistryAuth, PullError> {
    let Ok(reference) = image.parse::<oci_client::Reference>() else { return Ok(RegistryAuth::Anonymous) };
    let ns = pod.namespace().unwrap_or_default();
    for secret in pod.spec.as_ref().and_then(|s| s.image_pull_secrets.as_ref()).into_iter().flatten() {
        let Some(data) = node.sources.secret_data(&ns, &secret.name) else { continue };
        let config = data.get(".dockerconfigjson").or_else(|| data.get(".dockercfg"));
        if let Some(auth) = config.and_then(|c| crate::images::auth_from_docker_config(c, reference.resolve_registry())) {
            return Ok(auth);
        }
    }
    if node.images.registries().needs_pod_token(&reference) {
        let token = node.tokens.for_audience(pod, crate::registries::CLUSTER_REGISTRY).await.map_err(|e| PullError::pull(format!("Failed to pull image {image:?}: {}", e.0)))?;
        return Ok(RegistryAuth::Bearer(token));
    }
    Ok(RegistryAuth::Anonymous)
}

/// What one run of the container gets, whatever runs it: its command and args with
/// `$(VAR)` expanded, environment, mounts, limits, and its log file.
fn launch(node: &Agent, pod: &Arc<Pod>, volumes: &HashMap<String, VolumeDir>, container: &Container, run: i32, usage: Arc<Usage>, terminate: watch::Receiver<bool>) -> Result<Launch, ConfigError> {
    let facts = node.facts(pod);
    let env = crate::env::container_env(container, &facts, &node.sources)?;
    let mounts = volumes::mounts(container, volumes)?;
    let expand = |s: &String| crate::env::expand(s, &env);
    let limits = container.resources.as_ref().and_then(|r| r.limits.as_ref());
    let memory_limit = limits.and_then(|l| l.get("memory")).map(|q| skiff_core::quantity::parse_units(&q.0)).transpose()
        .map_err(|_| ConfigError("resources.limits.memory is not a quantity".into()))?
        .map(|b| b.max(0) as u64);
    let cpu_limit_milli = limits.and_then(|l| l.get("cpu")).map(|q| skiff_core::quantity::parse_milli(&q.0)).transpose()
        .map_err(|_| ConfigError("resources.limits.cpu is not a quantity".into()))?
        .map(|m| m.max(1) as u64);
    let path = node.logs.file(&pod.namespace().unwrap_or_default(), &pod.name_any(), &pod.uid().unwrap_or_default(), &container.name, run as u32);
    let log = crate::logs::LogSink::create(&path).map_err(|e| ConfigError(format!("creating the log file {}: {e}", path.display())))?;
    node.logs.prune(&pod.namespace().unwrap_or_default(), &pod.name_any(), &pod.uid().unwrap_or_default(), &container.name);
    Ok(Launch {
        pod: pod.clone(),
        container: container.clone(),
        pod_ip: facts.pod_ip.clone(),
        command: container.command.iter().flatten().map(expand).collect(),
        args: container.args.iter().flatten().map(expand).collect(),
        env,
        mounts,
        memory_limit,
        cpu_limit_milli,
        log,
        usage,
        cluster_dns: node.config.cluster_dns.clone(),
        terminate,
    })
}
