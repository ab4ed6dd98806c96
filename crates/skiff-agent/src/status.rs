//! What the agent knows of a pod's containers, and the pod status Kubernetes derives from
//! it: phase, conditions and container statuses, computed as kubelet computes them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};

/// How a container run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Terminated {
    pub exit_code: i32,
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Option<Time>,
    pub finished_at: Time,
}

impl Terminated {
    fn to_json(&self, container_id: &str) -> Value {
        let mut t = json!({"exitCode": self.exit_code, "reason": self.reason, "startedAt": self.started_at, "finishedAt": self.finished_at, "containerID": container_id});
        if let Some(m) = &self.message {
            t["message"] = json!(m);
        }
        json!({"terminated": t})
    }
}

/// A container's state, as its status shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Waiting { reason: String, message: Option<String> },
    Running { started_at: Time },
    Terminated(Terminated),
}

/// One container's status.
#[derive(Debug, Clone)]
pub struct ContainerState {
    pub name: String,
    pub image: String,
    /// `reference@digest` once pulled.
    pub image_id: String,
    /// The runtime running it (its RuntimeClass handler): the scheme of its containerID.
    pub runtime: &'static str,
    pub restart_count: i32,
    pub state: State,
    pub last: Option<Terminated>,
    /// The readiness probe's verdict; `None` without one (ready while running).
    pub probe_ready: Option<bool>,
    /// Whether the startup probe has passed; `None` without one.
    pub probe_started: Option<bool>,
}

impl ContainerState {
    pub fn new(name: &str, image: &str) -> Self {
        ContainerState {
            name: name.into(),
            image: image.into(),
            image_id: String::new(),
            runtime: crate::runtime::WASM_HANDLER,
            restart_count: 0,
            state: State::Waiting { reason: "ContainerCreating".into(), message: None },
            last: None,
            probe_ready: None,
            probe_started: None,
        }
    }

    pub fn container_id(&self, uid: &str) -> String {
        self.run_id(uid, self.restart_count)
    }

    fn run_id(&self, uid: &str, run: i32) -> String {
        format!("{}://{uid}/{}/{run}", self.runtime, self.name)
    }

    /// Records a run reported running before an agent restart, which did not outlive it
    /// (a Wasm guest runs in the agent's process), as ended.
    pub fn end_lost_run(&mut self) {
        let State::Running { started_at } = &self.state else { return };
        let gone = if self.runtime == crate::runtime::WASM_HANDLER { "the container's Wasm instance ended with it" } else { "the container's run was gone" };
        self.state = State::Terminated(Terminated {
            exit_code: 137,
            reason: "Error".into(),
            message: Some(format!("the node agent restarted and {gone}")),
            started_at: Some(started_at.clone()),
            finished_at: skiff_client::now(),
        });
    }

    pub fn is_running(&self) -> bool {
        matches!(self.state, State::Running { .. })
    }

    /// Running, started (per its startup probe) and ready (per its readiness probe).
    pub fn is_ready(&self) -> bool {
        self.is_running() && self.probe_started.unwrap_or(true) && self.probe_ready.unwrap_or(true)
    }

    /// Exited 0 and will not run again.
    pub fn succeeded(&self) -> bool {
        matches!(&self.state, State::Terminated(t) if t.exit_code == 0)
    }

    fn to_json(&self, uid: &str) -> Value {
        let id = self.container_id(uid);
        let state = match &self.state {
            State::Waiting { reason, message } => {
                let mut w = json!({"reason": reason});
                if let Some(m) = message {
                    w["message"] = json!(m);
                }
                json!({"waiting": w})
            }
            State::Running { started_at } => json!({"running": {"startedAt": started_at}}),
            State::Terminated(t) => t.to_json(&id),
        };
        let started = self.is_running() && self.probe_started.unwrap_or(true);
        let mut s = json!({
            "name": self.name, "image": self.image, "imageID": self.image_id, "restartCount": self.restart_count,
            "ready": self.is_ready(), "started": started, "state": state,
            "lastState": self.last.as_ref().map(|t| t.to_json(&self.run_id(uid, self.restart_count - 1))).unwrap_or(json!({})),
        });
        if !matches!(self.state, State::Waiting { .. }) || self.restart_count > 0 {
            s["containerID"] = json!(id);
        }
        s
    }
}

/// Everything the agent reports about one pod.
#[derive(Debug, Clone)]
pub struct PodState {
    pub uid: String,
    pub restart_policy: String,
    pub init: Vec<ContainerState>,
    pub containers: Vec<ContainerState>,
    pub host_ip: String,
    pub pod_ip: String,
    pub start_time: Time,
    /// Volumes are ready and containers may start.
    pub sandbox_ready: bool,
    /// A terminal phase decided by the agent (deadline exceeded, stopped for deletion).
    pub forced: Option<(String, String, String)>,
    /// When each condition last changed, so unchanged conditions keep their time.
    transitions: BTreeMap<String, (bool, Time)>,
}

impl PodState {
    /// The state of a pod the agent starts working on. A pod that already has a status
    /// (the agent restarted) keeps its restart counts and finished containers; a
    /// container it reported running stays running until the worker adopts its run or
    /// finds it lost with the agent ([`ContainerState::end_lost_run`]).
    /// The pod IP is the one reported before, until the worker assigns it.
    pub fn new(pod: &Pod, host_ip: &str) -> PodState {
        let spec = pod.spec.clone().unwrap_or_default();
        let status = pod.status.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let adopt = |c: &k8s_openapi::api::core::v1::Container, previous: &Option<Vec<k8s_openapi::api::core::v1::ContainerStatus>>| {
            let mut state = ContainerState::new(&c.name, c.image.as_deref().unwrap_or_default());
            let Some(old) = previous.iter().flatten().find(|s| s.name == c.name) else { return state };
            state.restart_count = old.restart_count;
            state.image_id = old.image_id.clone();
            state.runtime = match old.container_id.as_deref().and_then(|id| id.split_once("://")).map(|(scheme, _)| scheme) {
                Some("crun") => "crun",
                Some("runc") => "runc",
                _ => crate::runtime::WASM_HANDLER,
            };
            state.last = old.last_state.as_ref().and_then(|s| s.terminated.as_ref()).map(terminated_from);
            match old.state.as_ref() {
                Some(s) if s.terminated.is_some() => state.state = State::Terminated(terminated_from(s.terminated.as_ref().unwrap())),
                // The worker adopts the run if it outlived the agent, else ends it.
                Some(s) if s.running.is_some() => state.state = State::Running { started_at: s.running.as_ref().and_then(|r| r.started_at.clone()).unwrap_or_else(skiff_client::now) },
                _ => {}
            }
            state
        };
        PodState {
            uid,
            restart_policy: spec.restart_policy.clone().unwrap_or_else(|| "Always".into()),
            init: spec.init_containers.iter().flatten().map(|c| adopt(c, &status.init_container_statuses)).collect(),
            containers: spec.containers.iter().map(|c| adopt(c, &status.container_statuses)).collect(),
            host_ip: host_ip.into(),
            pod_ip: status.pod_ip.clone().unwrap_or_default(),
            start_time: status.start_time.clone().unwrap_or_else(skiff_client::now),
            sandbox_ready: false,
            forced: None,
            transitions: status.conditions.iter().flatten().map(|c| (c.type_.clone(), (c.status == "True", c.last_transition_time.clone().unwrap_or_else(skiff_client::now)))).collect(),
        }
    }

    /// Whether a container that exited with `code` runs again under the pod's policy.
    pub fn restarts(&self, code: i32) -> bool {
        match self.restart_policy.as_str() {
            "Never" => false,
            "OnFailure" => code != 0,
            _ => true,
        }
    }

    pub fn init_done(&self) -> bool {
        self.init.iter().all(ContainerState::succeeded)
    }

    /// The phase, as kubelet derives it from container states.
    pub fn phase(&self) -> &'static str {
        if let Some((phase, _, _)) = &self.forced {
            return if phase == "Succeeded" { "Succeeded" } else { "Failed" };
        }
        let failed_for_good = |c: &ContainerState| matches!(&c.state, State::Terminated(t) if t.exit_code != 0 && !self.restarts(t.exit_code));
        if self.restart_policy == "Never" && self.init.iter().any(failed_for_good) {
            return "Failed";
        }
        if !self.init_done() {
            return "Pending";
        }
        let finished = |c: &ContainerState| matches!(&c.state, State::Terminated(t) if !self.restarts(t.exit_code));
        if !self.containers.is_empty() && self.containers.iter().all(finished) {
            return if self.containers.iter().all(ContainerState::succeeded) { "Succeeded" } else { "Failed" };
        }
        let has_run = |c: &ContainerState| !matches!(c.state, State::Waiting { .. }) || c.restart_count > 0 || c.last.is_some();
        if self.containers.iter().any(has_run) { "Running" } else { "Pending" }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self.phase(), "Succeeded" | "Failed")
    }

    fn condition(&mut self, type_: &str, ok: bool, reason: Option<&str>, message: Option<String>) -> PodCondition {
        let now = skiff_client::now();
        let entry = self.transitions.entry(type_.to_string()).or_insert((ok, now.clone()));
        if entry.0 != ok {
            *entry = (ok, now);
        }
        PodCondition {
            type_: type_.into(),
            status: if ok { "True" } else { "False" }.into(),
            last_transition_time: Some(entry.1.clone()),
            reason: reason.filter(|_| !ok).map(Into::into),
            message: message.filter(|_| !ok),
            ..Default::default()
        }
    }

    /// Every container ready, and the pod not finished: its `Ready` condition.
    pub fn is_ready(&self) -> bool {
        self.containers.iter().all(|c| c.is_ready()) && !self.is_terminal()
    }

    /// Where the pod serves, while it is ready.
    pub fn serving_at(&self) -> Option<std::net::IpAddr> {
        self.is_ready().then(|| self.pod_ip.parse().ok()).flatten()
    }

    /// The pod's `status` as a JSON merge patch body.
    pub fn to_status(&mut self) -> Value {
        let phase = self.phase();
        let terminal = self.is_terminal();
        let unready: Vec<String> = self.containers.iter().filter(|c| !c.is_ready()).map(|c| c.name.clone()).collect();
        let unready_msg = Some(format!("containers with unready status: [{}]", unready.join(" ")));
        let incomplete: Vec<String> = self.init.iter().filter(|c| !c.succeeded()).map(|c| c.name.clone()).collect();
        let ready = self.is_ready();
        let conditions = vec![
            self.condition("PodReadyToStartContainers", self.sandbox_ready && !terminal, None, None),
            self.condition("Initialized", incomplete.is_empty(), Some("ContainersNotInitialized"), Some(format!("containers with incomplete status: [{}]", incomplete.join(" ")))),
            self.condition("Ready", ready, Some(if terminal { "PodCompleted" } else { "ContainersNotReady" }), unready_msg.clone()),
            self.condition("ContainersReady", ready, Some(if terminal { "PodCompleted" } else { "ContainersNotReady" }), unready_msg),
            self.condition("PodScheduled", true, None, None),
        ];
        let mut status = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.host_ip, "hostIPs": [{"ip": self.host_ip}],
            "podIP": (!self.pod_ip.is_empty()).then_some(&self.pod_ip),
            "podIPs": (!self.pod_ip.is_empty()).then(|| json!([{"ip": self.pod_ip}])),
            "startTime": self.start_time,
            "initContainerStatuses": self.init.iter().map(|c| c.to_json(&self.uid)).collect::<Vec<_>>(),
            "containerStatuses": self.containers.iter().map(|c| c.to_json(&self.uid)).collect::<Vec<_>>(),
            "reason": Value::Null, "message": Value::Null,
        });
        if let Some((_, reason, message)) = &self.forced {
            status["reason"] = json!(reason);
            status["message"] = json!(message);
        }
        status
    }
}

fn terminated_from(t: &k8s_openapi::api::core::v1::ContainerStateTerminated) -> Terminated {
    Terminated {
        exit_code: t.exit_code,
        reason: t.reason.clone().unwrap_or_default(),
        message: t.message.clone(),
        started_at: t.started_at.clone(),
        finished_at: t.finished_at.clone().unwrap_or_else(skiff_client::now),
    }
}

/// Kubernetes' crash-loop back-off before restart number `restarts + 1`: the first restart
/// is immediate, then 10 s doubling to 5 min.
pub fn crash_backoff(restarts: i32) -> std::time::Duration {
    if restarts <= 0 {
        return std::time::Duration::ZERO;
    }
    let secs = 10u64.saturating_mul(1 << (restarts - 1).min(5) as u64).min(300);
    std::time::Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;

    fn parse(status: &Value) -> PodStatus {
        serde_json::from_value(status.clone()).unwrap()
    }

    fn pod(policy: &str, status: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
            "spec": {"restartPolicy": policy, "initContainers": [{"name": "init", "image": "i"}], "containers": [{"name": "a", "image": "x"}]},
            "status": status,
        }))
        .unwrap()
    }

    fn ended(code: i32) -> State {
        State::Terminated(Terminated { exit_code: code, reason: if code == 0 { "Completed" } else { "Error" }.into(), message: None, started_at: None, finished_at: skiff_client::now() })
    }

    #[test]
    fn phases_follow_kubelet() {
        let mut s = PodState::new(&pod("OnFailure", json!({})), "10.0.0.1");
        assert_eq!(s.phase(), "Pending");
        s.init[0].state = ended(0);
        assert_eq!(s.phase(), "Pending");
        s.containers[0].state = State::Running { started_at: skiff_client::now() };
        assert_eq!(s.phase(), "Running");
        s.containers[0].state = ended(1);
        assert_eq!(s.phase(), "Running", "OnFailure restarts a failed container");
        s.containers[0].state = ended(0);
        assert_eq!(s.phase(), "Succeeded");
        let mut never = PodState::new(&pod("Never", json!({})), "");
        never.init[0].state = ended(2);
        assert_eq!(never.phase(), "Failed");
    }

    #[test]
    fn conditions_and_statuses() {
        let mut s = PodState::new(&pod("Always", json!({})), "10.0.0.1");
        s.init[0].state = ended(0);
        s.containers[0].state = State::Running { started_at: skiff_client::now() };
        s.sandbox_ready = true;
        let status = parse(&s.to_status());
        let cond = |t: &str| status.conditions.iter().flatten().find(|c| c.type_ == t).unwrap().status.clone();
        assert_eq!(cond("Ready"), "True");
        assert_eq!(cond("Initialized"), "True");
        let c = &status.container_statuses.unwrap()[0];
        assert!(c.ready && c.state.as_ref().unwrap().running.is_some());
    }

    #[test]
    fn a_restarted_agent_records_lost_containers() {
        let previous = json!({"startTime": "2026-01-01T00:00:00Z", "containerStatuses": [{"name": "a", "image": "x", "imageID": "x@sha256:1", "ready": true, "restartCount": 2, "state": {"running": {"startedAt": "2026-01-01T00:00:01Z"}}}]});
        let s = PodState::new(&pod("Always", previous), "");
        let mut c = s.containers[0].clone();
        assert_eq!(c.restart_count, 2);
        // Running until the worker finds no run to adopt.
        assert!(c.is_running());
        c.end_lost_run();
        assert!(matches!(&c.state, State::Terminated(t) if t.exit_code == 137 && t.message.as_ref().unwrap().contains("restarted")));
        assert!(matches!(&c.state, State::Terminated(t) if t.started_at.as_ref().unwrap().0.to_string() == "2026-01-01T00:00:01Z"));
        assert_eq!(s.start_time.0.to_string(), "2026-01-01T00:00:00Z");
    }

    #[test]
    fn crash_backoff_doubles_to_five_minutes() {
        let secs: Vec<u64> = (0..9).map(|n| crash_backoff(n).as_secs()).collect();
        assert_eq!(secs, vec![0, 10, 20, 40, 80, 160, 300, 300, 300]);
    }
}
