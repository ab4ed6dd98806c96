//! The OCI runtime spec (`config.json`) of one container run, from the image's config and
//! the pod: argv, environment, working directory and user; the sandbox's namespaces and
//! `/etc` files; volume mounts; cgroup limits from `resources`; and the securityContext
//! (capabilities, privileged, readOnlyRootFilesystem, runAsUser/Group, runAsNonRoot,
//! allowPrivilegeEscalation, a `RuntimeDefault` seccomp profile). Written as JSON; the tests read it back with oci-spec's
//! types.

use std::path::Path;

use k8s_openapi::api::core::v1::{Container, Pod, SecurityContext};
use serde_json::{Value, json};

use super::image_config::{ImageDefaults, argv};
use super::sandbox::Sandbox;
use crate::runtime::Launch;

/// The capabilities a container has by default (the container runtimes' default set).
const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID",
    "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
];

/// Every capability, for a privileged container.
const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID", "CAP_SETUID",
    "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD",
    "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
];

/// Why a container's config cannot be made (its `CreateContainerConfigError`).
#[derive(Debug, PartialEq)]
pub struct ConfigError(pub String);

/// The effective securityContext field: the container's, else the pod's.
fn security<T: Clone>(pod: &Pod, container: &Container, own: impl Fn(&SecurityContext) -> Option<T>, of_pod: impl Fn(&k8s_openapi::api::core::v1::PodSecurityContext) -> Option<T>) -> Option<T> {
    container.security_context.as_ref().and_then(&own).or_else(|| pod.spec.as_ref()?.security_context.as_ref().and_then(of_pod))
}

/// The process's uid and gid: the securityContext's, else the image's `User` (looked up
/// in the image's /etc/passwd and /etc/group when given by name), else root.
fn user(launch: &Launch, image: &ImageDefaults, rootfs: &Path) -> Result<(i64, i64), ConfigError> {
    let (pod, c) = (&*launch.pod, &launch.container);
    let (mut uid, mut gid) = (0, 0);
    if let Some(user) = &image.user {
        let (u, g) = user.split_once(':').map(|(u, g)| (u, Some(g))).unwrap_or((user, None));
        let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
        let entry = passwd.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| f.len() > 3 && f[0] == u);
        match (u.parse::<i64>(), &entry) {
            (Ok(n), _) => uid = n,
            (_, Some(f)) => {
                uid = f[2].parse().unwrap_or(0);
                gid = f[3].parse().unwrap_or(0);
            }
            _ => return Err(ConfigError(format!("the image's user {u:?} is not in its /etc/passwd"))),
        }
        if let Some(g) = g {
            let groups = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
            gid = match g.parse::<i64>() {
                Ok(n) => n,
                Err(_) => groups.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| f.len() > 2 && f[0] == g).and_then(|f| f[2].parse().ok())
                    .ok_or_else(|| ConfigError(format!("the image's group {g:?} is not in its /etc/group")))?,
            };
        }
    }
    if let Some(u) = security(pod, c, |s| s.run_as_user, |s| s.run_as_user) {
        uid = u;
    }
    if let Some(g) = security(pod, c, |s| s.run_as_group, |s| s.run_as_group) {
        gid = g;
    }
    if security(pod, c, |s| s.run_as_non_root, |s| s.run_as_non_root) == Some(true) && uid == 0 {
        return Err(ConfigError("container has runAsNonRoot and image will run as root".into()));
    }
    Ok((uid, gid))
}

/// The container's capabilities: the default set with the securityContext's `add` and
/// `drop` (`ALL` drops every one), or every capability when privileged.
fn capabilities(security_context: Option<&SecurityContext>) -> Vec<String> {
    if security_context.and_then(|s| s.privileged) == Some(true) {
        return ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    }
    let name = |c: &String| if c.starts_with("CAP_") { c.to_uppercase() } else { format!("CAP_{}", c.to_uppercase()) };
    let caps = security_context.and_then(|s| s.capabilities.as_ref());
    let drop: Vec<String> = caps.and_then(|c| c.drop.as_ref()).into_iter().flatten().map(name).collect();
    let mut set: Vec<String> = if drop.iter().any(|d| d == "CAP_ALL") { vec![] } else { DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).filter(|c| !drop.contains(c)).collect() };
    for add in caps.and_then(|c| c.add.as_ref()).into_iter().flatten().map(name) {
        if add == "CAP_ALL" {
            return ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect();
        }
        if !set.contains(&add) {
            set.push(add);
        }
    }
    set
}

/// The whole `config.json`.
pub fn runtime_spec(launch: &Launch, image: &ImageDefaults, rootfs: &Path, sandbox: &Sandbox, cgroups_path: &str) -> Result<Value, ConfigError> {
    let c = &launch.container;
    let args = argv(image, &launch.command, &launch.args);
    if args.is_empty() {
        return Err(ConfigError("no command specified: the container has no command and the image no entrypoint or Cmd".into()));
    }
    let (uid, gid) = user(launch, image, rootfs)?;
    let sc = c.security_context.as_ref();
    let privileged = sc.and_then(|s| s.privileged) == Some(true);
    let caps = capabilities(sc);
    let supplemental: Vec<i64> = launch.pod.spec.as_ref().and_then(|s| s.security_context.as_ref()).and_then(|s| s.supplemental_groups.clone()).unwrap_or_default();
    // The image's environment first, then the container's, which wins.
    let mut env: Vec<(String, String)> = image.env.clone();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(0, ("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()));
    }
    env.push(("HOSTNAME".into(), std::fs::read_to_string(&sandbox.etc_hostname).unwrap_or_default().trim().to_string()));
    for (k, v) in &launch.env {
        env.retain(|(key, _)| key != k);
        env.push((k.clone(), v.clone()));
    }
    let seccomp = match security(&launch.pod, c, |s| s.seccomp_profile.clone(), |s| s.seccomp_profile.clone()) {
        _ if privileged => None,
        Some(p) if p.type_ == "RuntimeDefault" => Some(super::seccomp::runtime_default(&caps)),
        Some(p) if p.type_ == "Localhost" => {
            return Err(ConfigError(format!("seccomp profile {:?} (Localhost): this node has no local profiles; use RuntimeDefault", p.localhost_profile.unwrap_or_default())));
        }
        _ => None,
    };
    let cwd = c.working_dir.clone().filter(|w| !w.is_empty()).or_else(|| image.working_dir.clone()).unwrap_or_else(|| "/".into());
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", if privileged { "rw" } else { "ro" }]}),
    ];
    for (file, dest) in [(&sandbox.etc_hosts, "/etc/hosts"), (&sandbox.etc_hostname, "/etc/hostname"), (&sandbox.resolv_conf, "/etc/resolv.conf")] {
        mounts.push(json!({"destination": dest, "type": "bind", "source": file, "options": ["rbind", "rprivate", "rw"]}));
    }
    for m in &launch.mounts {
        mounts.push(json!({"destination": m.guest_path, "type": "bind", "source": m.host_path, "options": ["rbind", "rprivate", if m.read_only { "ro" } else { "rw" }]}));
    }
    let mut resources = json!({"devices": [{"allow": privileged, "access": "rwm"}]});
    if let Some(bytes) = launch.memory_limit {
        resources["memory"] = json!({"limit": bytes, "swap": bytes});
    }
    let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
    let cpu_request = requests.and_then(|r| r.get("cpu")).and_then(|q| skiff_core::quantity::parse_milli(&q.0).ok()).or(launch.cpu_limit_milli.map(|m| m as i64));
    let mut cpu = json!({"shares": cpu_request.map_or(2, |m| (m * 1024 / 1000).max(2))});
    if let Some(milli) = launch.cpu_limit_milli {
        cpu["period"] = json!(100_000);
        cpu["quota"] = json!((milli as i64 * 100).max(1000));
    }
    resources["cpu"] = cpu;
    let (masked, readonly): (Vec<&str>, Vec<&str>) = if privileged {
        (vec![], vec![])
    } else {
        (
            vec!["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            vec!["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        )
    };
    // As many open files as the node lets the agent have (containers get 1048576 where the
    // kernel allows it; a smaller host limit cannot be raised from inside).
    let open_files = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum.unwrap_or(1 << 20).min(1 << 20);
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid, "additionalGids": supplemental},
            "args": args,
            "env": env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": open_files, "soft": open_files}],
            "noNewPrivileges": sc.and_then(|s| s.allow_privilege_escalation) == Some(false),
            "oomScoreAdj": 0,
        },
        "root": {"path": rootfs, "readonly": sc.and_then(|s| s.read_only_root_filesystem) == Some(true)},
        "mounts": mounts,
        "linux": {
            "cgroupsPath": cgroups_path,
            "resources": resources,
            "namespaces": [
                {"type": "pid"}, {"type": "mount"}, {"type": "cgroup"},
                {"type": "network", "path": sandbox.netns},
                {"type": "ipc", "path": sandbox.ipc},
                {"type": "uts", "path": sandbox.uts},
            ],
            "maskedPaths": masked,
            "readonlyPaths": readonly,
        },
    });
    if let Some(profile) = seccomp {
        spec["linux"]["seccomp"] = profile;
    }
    Ok(spec)
}
