//! PodSecurity admission: Kubernetes' Pod Security Standards (privileged, baseline,
//! restricted), chosen per namespace by its `pod-security.kubernetes.io/<mode>` labels,
//! for three modes: `enforce` refuses a pod that violates the level (403), `warn` answers
//! with kubectl's `Warning` lines (for pods and the pod templates of workloads), `audit`
//! notes the violations in the request's audit event. A namespace without a label takes
//! the server's default for that mode. Every `<mode>-version` is evaluated as `latest`.
//! The checks and their messages are Kubernetes' (pod-security-admission's policy
//! package), so a user sees the same text as on any cluster.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::{Map, Value};

use crate::error::{ApiError, ApiResult, FieldError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    pub fn parse(text: &str) -> Option<Level> {
        match text {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

const LABEL_PREFIX: &str = "pod-security.kubernetes.io/";
const MODES: [&str; 3] = ["enforce", "audit", "warn"];

/// One mode's level and the version its label names (`latest` unless pinned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeLevel {
    pub level: Level,
    pub version: String,
}

impl ModeLevel {
    fn latest(level: Level) -> ModeLevel {
        ModeLevel { level, version: "latest".into() }
    }

    /// `restricted:latest`, as the messages name a policy.
    fn label(&self) -> String {
        format!("{}:{}", self.level.name(), self.version)
    }
}

/// What a namespace's pods are held to, per mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespacePolicy {
    pub enforce: ModeLevel,
    pub audit: ModeLevel,
    pub warn: ModeLevel,
}

/// The levels namespaces without labels get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defaults {
    pub enforce: Level,
    pub audit: Level,
    pub warn: Level,
}

impl Default for Defaults {
    /// Secure by default, with ordinary manifests still working: baseline enforced (no
    /// host namespaces, privileged containers, hostPath or added capabilities), and
    /// warned of for workloads' templates; restricted's findings in the audit log only.
    fn default() -> Defaults {
        Defaults { enforce: Level::Baseline, audit: Level::Restricted, warn: Level::Baseline }
    }
}

impl NamespacePolicy {
    /// The policy a namespace's labels give; an invalid label is the namespace's own
    /// validation error (refused when the namespace is written).
    pub fn from_labels(labels: Option<&Map<String, Value>>, defaults: Defaults) -> NamespacePolicy {
        let mode = |mode: &str, default: Level| {
            let get = |key: String| labels.and_then(|l| l.get(&key)).and_then(Value::as_str);
            let level = get(format!("{LABEL_PREFIX}{mode}")).and_then(Level::parse).unwrap_or(default);
            let version = get(format!("{LABEL_PREFIX}{mode}-version")).filter(|v| valid_version(v)).unwrap_or("latest");
            ModeLevel { level, version: version.to_string() }
        };
        NamespacePolicy { enforce: mode("enforce", defaults.enforce), audit: mode("audit", defaults.audit), warn: mode("warn", defaults.warn) }
    }

    pub fn privileged() -> NamespacePolicy {
        NamespacePolicy { enforce: ModeLevel::latest(Level::Privileged), audit: ModeLevel::latest(Level::Privileged), warn: ModeLevel::latest(Level::Privileged) }
    }
}

fn valid_version(v: &str) -> bool {
    v == "latest" || v.strip_prefix("v1.").is_some_and(|minor| !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit()))
}

/// The namespace's PodSecurity labels' errors, as field errors of the namespace.
pub fn validate_labels(labels: Option<&Map<String, Value>>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (key, value) in labels.into_iter().flatten() {
        let Some(mode) = key.strip_prefix(LABEL_PREFIX) else { continue };
        let value = value.as_str().unwrap_or_default();
        let field = format!("metadata.labels[{key}]");
        if MODES.contains(&mode) && Level::parse(value).is_none() {
            errors.push(FieldError::invalid(&field, value, "must be one of privileged, baseline, restricted"));
        } else if mode.strip_suffix("-version").is_some_and(|m| MODES.contains(&m)) && !valid_version(value) {
            errors.push(FieldError::invalid(&field, value, "must be \"latest\" or of the form \"v1.<minor>\""));
        }
    }
    errors
}

/// What admission found for one object.
#[derive(Debug, Default, PartialEq)]
pub struct Verdict {
    pub warnings: Vec<String>,
    /// The audit event's annotations (`pod-security.kubernetes.io/audit-violations`).
    pub audit: Vec<(&'static str, String)>,
}

/// Admits a pod named `name`: refused (403) when it violates the enforced level;
/// otherwise the warnings and audit annotations of the other modes.
pub fn admit_pod(policy: &NamespacePolicy, name: &str, pod: &Value) -> ApiResult<Verdict> {
    let spec = pod.get("spec").unwrap_or(&Value::Null);
    let meta = pod.get("metadata").unwrap_or(&Value::Null);
    let enforced = violations(policy.enforce.level, meta, spec);
    if !enforced.is_empty() {
        return Err(ApiError::forbidden(format!("pods {name:?} is forbidden: violates PodSecurity {:?}: {}", policy.enforce.label(), enforced.join(", "))));
    }
    Ok(judge(policy, meta, spec))
}

/// The warnings and audit annotations for a workload's pod template (`template` is the
/// PodTemplateSpec); never refused, as in Kubernetes.
pub fn admit_template(policy: &NamespacePolicy, template: &Value) -> Verdict {
    judge(policy, template.get("metadata").unwrap_or(&Value::Null), template.get("spec").unwrap_or(&Value::Null))
}

/// Where a workload of `kind` keeps its pod template.
pub fn template_of<'a>(kind: &str, object: &'a Value) -> Option<&'a Value> {
    match kind {
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" | "ReplicationController" => object.pointer("/spec/template"),
        "CronJob" => object.pointer("/spec/jobTemplate/spec/template"),
        "PodTemplate" => object.get("template"),
        _ => None,
    }
}

fn judge(policy: &NamespacePolicy, meta: &Value, spec: &Value) -> Verdict {
    let mut verdict = Verdict::default();
    let warned = violations(policy.warn.level, meta, spec);
    if !warned.is_empty() {
        verdict.warnings.push(format!("would violate PodSecurity {:?}: {}", policy.warn.label(), warned.join(", ")));
    }
    let audited = violations(policy.audit.level, meta, spec);
    if !audited.is_empty() {
        verdict.audit.push(("pod-security.kubernetes.io/audit-violations", format!("would violate PodSecurity {:?}: {}", policy.audit.label(), audited.join(", "))));
    }
    verdict
}

/// Capabilities baseline lets a container add.
const BASELINE_CAPABILITIES: [&str; 13] =
    ["AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"];
/// Sysctls baseline allows (namespaced and safe).
const SAFE_SYSCTLS: [&str; 10] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];
/// Volume types restricted allows.
const RESTRICTED_VOLUMES: [&str; 8] = ["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"];
const SELINUX_TYPES: [&str; 4] = ["container_t", "container_init_t", "container_kvm_t", "container_engine_t"];

/// The checks `level` makes of a pod, each a Kubernetes message; empty when it passes.
pub fn violations(level: Level, meta: &Value, spec: &Value) -> Vec<String> {
    if level == Level::Privileged {
        return Vec::new();
    }
    let pod_ctx = spec.get("securityContext").unwrap_or(&Value::Null);
    let containers: Vec<&Value> = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| spec.get(*k).and_then(Value::as_array).into_iter().flatten())
        .collect();
    let name = |c: &Value| c.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
    let ctx = |c: &'_ Value| c.get("securityContext").cloned().unwrap_or(Value::Null);
    let mut out = Vec::new();

    // Baseline.
    let windows_host = |c: &Value| c.pointer("/windowsOptions/hostProcess").and_then(Value::as_bool) == Some(true);
    if windows_host(pod_ctx) || containers.iter().any(|c| windows_host(&ctx(c))) {
        out.push("hostProcess (pod or containers must not set securityContext.windowsOptions.hostProcess=true)".to_string());
    }
    let host: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"].iter().filter(|k| spec.get(**k).and_then(Value::as_bool) == Some(true)).map(|k| format!("{k}=true")).collect();
    if !host.is_empty() {
        out.push(format!("host namespaces ({})", host.join(", ")));
    }
    let privileged: Vec<String> = containers.iter().filter(|c| ctx(c).get("privileged").and_then(Value::as_bool) == Some(true)).map(|c| name(c)).collect();
    if !privileged.is_empty() {
        out.push(format!("privileged ({} must not set securityContext.privileged=true)", containers_phrase(&privileged)));
    }
    let mut added: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in &containers {
        for cap in strings(ctx(c).pointer("/capabilities/add")) {
            if !BASELINE_CAPABILITIES.contains(&cap.as_str()) {
                added.entry(name(c)).or_default().push(cap);
            }
        }
    }
    if !added.is_empty() {
        let each: Vec<String> = added.iter().map(|(c, caps)| format!("container {c:?} must not include {} in securityContext.capabilities.add", quoted(caps))).collect();
        out.push(format!("non-default capabilities ({})", each.join("; ")));
    }
    let volumes: Vec<&Value> = spec.get("volumes").and_then(Value::as_array).into_iter().flatten().collect();
    let host_paths: Vec<String> = volumes.iter().filter(|v| v.get("hostPath").is_some()).map(|v| name(v)).collect();
    if !host_paths.is_empty() {
        out.push(format!("hostPath volumes ({} {})", if host_paths.len() == 1 { "volume" } else { "volumes" }, quoted(&host_paths)));
    }
    let mut host_ports = Vec::new();
    for c in &containers {
        for p in c.get("ports").and_then(Value::as_array).into_iter().flatten() {
            if let Some(port) = p.get("hostPort").and_then(Value::as_i64).filter(|p| *p != 0) {
                host_ports.push(format!("{:?}={port}", name(c)));
            }
        }
    }
    if !host_ports.is_empty() {
        out.push(format!("hostPort ({} {} {})", if host_ports.len() == 1 { "container" } else { "containers" }, host_ports.join(", "), if host_ports.len() == 1 { "uses hostPort" } else { "use hostPorts" }));
    }
    let unconfined_apparmor = |v: &Value| v.pointer("/appArmorProfile/type").and_then(Value::as_str) == Some("Unconfined");
    let annotation_unconfined = meta.get("annotations").and_then(Value::as_object).is_some_and(|a| {
        a.iter().any(|(k, v)| k.starts_with("container.apparmor.security.beta.kubernetes.io/") && v.as_str() == Some("unconfined"))
    });
    if unconfined_apparmor(pod_ctx) || annotation_unconfined || containers.iter().any(|c| unconfined_apparmor(&ctx(c))) {
        out.push("forbidden AppArmor profile (pod or containers must not set the AppArmor profile type to \"Unconfined\")".to_string());
    }
    let bad_selinux = |v: &Value| {
        v.get("seLinuxOptions").is_some_and(|o| {
            o.get("type").and_then(Value::as_str).is_some_and(|t| !t.is_empty() && !SELINUX_TYPES.contains(&t))
                || o.get("user").and_then(Value::as_str).is_some_and(|u| !u.is_empty())
                || o.get("role").and_then(Value::as_str).is_some_and(|r| !r.is_empty())
        })
    };
    if bad_selinux(pod_ctx) || containers.iter().any(|c| bad_selinux(&ctx(c))) {
        out.push("seLinuxOptions (pod or containers must not set securityContext.seLinuxOptions type other than container_t, container_init_t, container_kvm_t or container_engine_t, nor user or role)".to_string());
    }
    let unmasked: Vec<String> = containers.iter().filter(|c| ctx(c).get("procMount").and_then(Value::as_str).is_some_and(|m| m != "Default")).map(|c| name(c)).collect();
    if !unmasked.is_empty() {
        out.push(format!("procMount ({} must not set securityContext.procMount to \"Unmasked\")", containers_phrase(&unmasked)));
    }
    let seccomp_type = |v: &Value| v.pointer("/seccompProfile/type").and_then(Value::as_str).map(str::to_string);
    let unconfined_seccomp: Vec<String> = containers.iter().filter(|c| seccomp_type(&ctx(c)).as_deref() == Some("Unconfined")).map(|c| name(c)).collect();
    if seccomp_type(pod_ctx).as_deref() == Some("Unconfined") || !unconfined_seccomp.is_empty() {
        let who = if unconfined_seccomp.is_empty() { "pod".to_string() } else { containers_phrase(&unconfined_seccomp) };
        out.push(format!("seccompProfile ({who} must not set securityContext.seccompProfile.type to \"Unconfined\")"));
    }
    let sysctls: Vec<String> = pod_ctx
        .get("sysctls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("name").and_then(Value::as_str))
        .filter(|n| !SAFE_SYSCTLS.contains(n))
        .map(str::to_string)
        .collect();
    if !sysctls.is_empty() {
        out.push(format!("forbidden sysctls ({})", sysctls.join(", ")));
    }
    if level == Level::Baseline {
        return out;
    }

    // Restricted.
    let restricted_volumes: Vec<String> = volumes
        .iter()
        .filter_map(|v| {
            let kind = v.as_object()?.keys().find(|k| k.as_str() != "name")?.clone();
            (!RESTRICTED_VOLUMES.contains(&kind.as_str())).then(|| format!("volume {:?} uses restricted volume type {kind:?}", name(v)))
        })
        .collect();
    if !restricted_volumes.is_empty() {
        out.push(format!("restricted volume types ({})", restricted_volumes.join("; ")));
    }
    let escalating: Vec<String> = containers.iter().filter(|c| ctx(c).get("allowPrivilegeEscalation").and_then(Value::as_bool) != Some(false)).map(|c| name(c)).collect();
    if !escalating.is_empty() {
        out.push(format!("allowPrivilegeEscalation != false ({} must set securityContext.allowPrivilegeEscalation=false)", containers_phrase(&escalating)));
    }
    let mut capability_problems = Vec::new();
    let not_dropping: Vec<String> = containers.iter().filter(|c| !strings(ctx(c).pointer("/capabilities/drop")).iter().any(|d| d == "ALL")).map(|c| name(c)).collect();
    if !not_dropping.is_empty() {
        capability_problems.push(format!("{} must set securityContext.capabilities.drop=[\"ALL\"]", containers_phrase(&not_dropping)));
    }
    for c in &containers {
        let extra: Vec<String> = strings(ctx(c).pointer("/capabilities/add")).into_iter().filter(|a| a != "NET_BIND_SERVICE").collect();
        if !extra.is_empty() {
            capability_problems.push(format!("container {:?} must not include {} in securityContext.capabilities.add", name(c), quoted(&extra)));
        }
    }
    if !capability_problems.is_empty() {
        out.push(format!("unrestricted capabilities ({})", capability_problems.join("; ")));
    }
    let pod_non_root = pod_ctx.get("runAsNonRoot").and_then(Value::as_bool);
    let explicitly_root: Vec<String> = containers.iter().filter(|c| ctx(c).get("runAsNonRoot").and_then(Value::as_bool) == Some(false)).map(|c| name(c)).collect();
    let unset: Vec<String> = containers.iter().filter(|c| ctx(c).get("runAsNonRoot").and_then(Value::as_bool).is_none()).map(|c| name(c)).collect();
    if pod_non_root == Some(false) || !explicitly_root.is_empty() || (pod_non_root.is_none() && !unset.is_empty()) {
        let mut why = Vec::new();
        if pod_non_root == Some(false) {
            why.push("pod must not set securityContext.runAsNonRoot=false".to_string());
        }
        if !explicitly_root.is_empty() {
            why.push(format!("{} must not set securityContext.runAsNonRoot=false", containers_phrase(&explicitly_root)));
        }
        if pod_non_root.is_none() && !unset.is_empty() {
            why.push(format!("pod or {} must set securityContext.runAsNonRoot=true", containers_phrase(&unset)));
        }
        out.push(format!("runAsNonRoot != true ({})", why.join("; ")));
    }
    let root_users: Vec<String> = containers.iter().filter(|c| ctx(c).get("runAsUser").and_then(Value::as_i64) == Some(0)).map(|c| name(c)).collect();
    if pod_ctx.get("runAsUser").and_then(Value::as_i64) == Some(0) || !root_users.is_empty() {
        let who = if root_users.is_empty() { "pod".to_string() } else { containers_phrase(&root_users) };
        out.push(format!("runAsUser=0 ({who} must not set runAsUser=0)"));
    }
    let confined = |t: Option<String>| matches!(t.as_deref(), Some("RuntimeDefault" | "Localhost"));
    if !confined(seccomp_type(pod_ctx)) {
        let unset: Vec<String> = containers.iter().filter(|c| !confined(seccomp_type(&ctx(c)))).map(|c| name(c)).collect();
        if !unset.is_empty() {
            out.push(format!("seccompProfile (pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")", containers_phrase(&unset)));
        }
    }
    out
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect()
}

/// `"a", "b"`.
fn quoted(items: &[String]) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{item:?}");
    }
    out
}

/// `container "a"` or `containers "a", "b"`.
fn containers_phrase(names: &[String]) -> String {
    format!("{} {}", if names.len() == 1 { "container" } else { "containers" }, quoted(names))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": spec})
    }

    fn check(level: Level, spec: Value) -> Vec<String> {
        violations(level, &Value::Null, &spec)
    }

    #[test]
    fn an_ordinary_pod_passes_baseline_and_hears_what_restricted_wants() {
        let spec = json!({"containers": [{"name": "web", "image": "nginx"}]});
        assert!(check(Level::Baseline, spec.clone()).is_empty());
        assert_eq!(
            check(Level::Restricted, spec),
            vec![
                r#"allowPrivilegeEscalation != false (container "web" must set securityContext.allowPrivilegeEscalation=false)"#,
                r#"unrestricted capabilities (container "web" must set securityContext.capabilities.drop=["ALL"])"#,
                r#"runAsNonRoot != true (pod or container "web" must set securityContext.runAsNonRoot=true)"#,
                r#"seccompProfile (pod or container "web" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#,
            ]
        );
        let hardened = json!({"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "web", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
            "volumes": [{"name": "c", "configMap": {"name": "x"}}, {"name": "t", "projected": {"sources": []}}]});
        assert!(check(Level::Restricted, hardened).is_empty());
    }

    #[test]
    fn baseline_refuses_the_host_and_privilege() {
        let spec = json!({"hostNetwork": true, "hostPID": true,
            "securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}, {"name": "net.ipv4.tcp_syncookies", "value": "1"}]},
            "containers": [
                {"name": "a", "securityContext": {"privileged": true, "capabilities": {"add": ["NET_ADMIN", "CHOWN", "SYS_TIME"]}}, "ports": [{"containerPort": 80, "hostPort": 8080}]},
                {"name": "b", "securityContext": {"privileged": true, "seccompProfile": {"type": "Unconfined"}, "procMount": "Unmasked"}}],
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}]});
        assert_eq!(
            check(Level::Baseline, spec),
            vec![
                "host namespaces (hostNetwork=true, hostPID=true)",
                r#"privileged (containers "a", "b" must not set securityContext.privileged=true)"#,
                r#"non-default capabilities (container "a" must not include "NET_ADMIN", "SYS_TIME" in securityContext.capabilities.add)"#,
                r#"hostPath volumes (volume "root")"#,
                r#"hostPort (container "a"=8080 uses hostPort)"#,
                r#"procMount (container "b" must not set securityContext.procMount to "Unmasked")"#,
                r#"seccompProfile (container "b" must not set securityContext.seccompProfile.type to "Unconfined")"#,
                "forbidden sysctls (kernel.msgmax)",
            ]
        );
        assert!(check(Level::Privileged, json!({"hostNetwork": true})).is_empty());
    }

    #[test]
    fn restricted_refuses_root_and_other_volumes() {
        let spec = json!({"securityContext": {"runAsUser": 0, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "securityContext": {"runAsNonRoot": false, "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["SYS_TIME"]}}}],
            "volumes": [{"name": "h", "hostPath": {"path": "/tmp"}}, {"name": "n", "nfs": {"server": "x", "path": "/"}}]});
        let found = check(Level::Restricted, spec);
        assert!(found.contains(&r#"restricted volume types (volume "h" uses restricted volume type "hostPath"; volume "n" uses restricted volume type "nfs")"#.to_string()), "{found:?}");
        assert!(found.contains(&r#"runAsNonRoot != true (container "c" must not set securityContext.runAsNonRoot=false)"#.to_string()), "{found:?}");
        assert!(found.contains(&"runAsUser=0 (pod must not set runAsUser=0)".to_string()), "{found:?}");
        assert!(found.iter().any(|f| f.starts_with("unrestricted capabilities (container \"c\" must not include \"SYS_TIME\"")), "{found:?}");
        assert!(!found.iter().any(|f| f.starts_with("seccompProfile")), "{found:?}");
    }

    #[test]
    fn namespace_labels_pick_each_mode_and_enforce_refuses_with_kubernetes_words() {
        let labels = json!({"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "v1.32",
            "pod-security.kubernetes.io/warn": "privileged"});
        let policy = NamespacePolicy::from_labels(labels.as_object(), Defaults::default());
        assert_eq!(policy.enforce, ModeLevel { level: Level::Restricted, version: "v1.32".into() });
        assert_eq!((policy.warn.level, policy.audit.level), (Level::Privileged, Level::Restricted));
        let refused = admit_pod(&policy, "web", &pod(json!({"containers": [{"name": "web"}]}))).unwrap_err();
        assert_eq!(refused.code, 403);
        assert!(refused.message.starts_with(r#"pods "web" is forbidden: violates PodSecurity "restricted:v1.32": allowPrivilegeEscalation != false"#), "{}", refused.message);
        // The defaults: baseline enforced and warned of, restricted audited.
        let default = NamespacePolicy::from_labels(None, Defaults::default());
        let verdict = admit_pod(&default, "web", &pod(json!({"containers": [{"name": "web"}]}))).unwrap();
        assert!(verdict.warnings.is_empty());
        assert!(verdict.audit[0].1.starts_with(r#"would violate PodSecurity "restricted:latest": "#));
        let template = json!({"metadata": {}, "spec": {"hostNetwork": true, "containers": [{"name": "c"}]}});
        let deployment = json!({"spec": {"template": template}});
        let verdict = admit_template(&default, template_of("Deployment", &deployment).unwrap());
        assert_eq!(verdict.warnings, vec![r#"would violate PodSecurity "baseline:latest": host namespaces (hostNetwork=true)"#]);
        assert!(admit_pod(&default, "h", &pod(json!({"hostNetwork": true, "containers": [{"name": "c"}]}))).is_err());
    }

    #[test]
    fn bad_labels_are_field_errors() {
        let labels = json!({"pod-security.kubernetes.io/enforce": "strict", "pod-security.kubernetes.io/warn-version": "1.30", "pod-security.kubernetes.io/audit": "baseline"});
        let errors = validate_labels(labels.as_object());
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.iter().any(|e| e.field == "metadata.labels[pod-security.kubernetes.io/enforce]" && e.message.contains("must be one of privileged, baseline, restricted")));
    }
}
