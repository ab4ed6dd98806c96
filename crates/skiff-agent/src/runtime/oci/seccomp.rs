//! The `RuntimeDefault` seccomp profile: every system call is allowed except those that
//! reach past a container's walls (kernel modules, kexec, reboot, the clock, keyrings,
//! BPF, perf, ptrace and cross-process memory, new namespaces, mounts, handles to host
//! files, NUMA policy, swap, accounting), each refused with EPERM. A call the container's
//! capabilities grant anyway (CAP_SYS_ADMIN's mounts and namespaces, CAP_SYS_PTRACE,
//! CAP_SYS_TIME, …) stays allowed, so a profile never takes what a capability gives.
//! Neither crun nor runc ships a default profile, so the node brings its own.
//!
//! It is a deny list, where Docker's and podman's profiles are allow lists: calls the
//! kernel adds later are allowed until listed here.

use serde_json::{Value, json};

/// System calls refused unless the container holds the capability named beside them.
const DENIED: &[(&str, &[&str])] = &[
    ("CAP_SYS_MODULE", &["init_module", "finit_module", "delete_module", "create_module", "query_module", "get_kernel_syms"]),
    ("CAP_SYS_BOOT", &["reboot", "kexec_load", "kexec_file_load"]),
    ("CAP_SYS_TIME", &["settimeofday", "stime", "clock_settime", "clock_adjtime", "adjtimex"]),
    ("CAP_SYS_PTRACE", &["ptrace", "process_vm_readv", "process_vm_writev", "kcmp"]),
    ("CAP_SYS_PACCT", &["acct"]),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_SYS_NICE", &["mbind", "set_mempolicy", "move_pages", "get_mempolicy"]),
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_ADMIN",
        &[
            "mount", "umount", "umount2", "pivot_root", "unshare", "setns", "swapon", "swapoff", "quotactl", "lookup_dcookie",
            "name_to_handle_at", "bpf", "perf_event_open", "fanotify_init", "fsopen", "fsmount", "fsconfig", "fspick", "move_mount",
            "open_tree", "add_key", "request_key", "keyctl", "userfaultfd", "nfsservctl", "sysfs", "_sysctl", "uselib", "ustat",
            "vm86", "vm86old",
        ],
    ),
];

/// `clone` flags that make new namespaces (CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC,
/// NEWUSER, NEWPID, NEWNET; NEWTIME exists only for `clone3` and `unshare`).
const NAMESPACE_FLAGS: &[u64] = &[0x0002_0000, 0x0200_0000, 0x0400_0000, 0x0800_0000, 0x1000_0000, 0x2000_0000, 0x4000_0000];

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// The seccomp architectures of this node (the native one and its compat ones).
fn architectures() -> Vec<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => vec!["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "aarch64" => vec!["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        _ => vec![],
    }
}

/// The profile for a container holding `capabilities` (`CAP_…` names).
pub fn runtime_default(capabilities: &[String]) -> Value {
    let holds = |cap: &str| capabilities.iter().any(|c| c == cap);
    let names: Vec<&str> = DENIED.iter().filter(|(cap, _)| !holds(cap)).flat_map(|(_, names)| names.iter().copied()).collect();
    let mut syscalls = vec![json!({"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM})];
    if !holds("CAP_SYS_ADMIN") {
        // clone3 passes its flags in memory a filter cannot read: ENOSYS makes the C
        // library fall back to clone, whose flags are checked here.
        syscalls.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}));
        for flag in NAMESPACE_FLAGS {
            syscalls.push(json!({"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM,
                "args": [{"index": clone_flags_index(), "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}]}));
        }
    }
    json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": architectures(), "syscalls": syscalls})
}

/// Which argument of `clone` holds its flags (the second on s390, the first elsewhere).
fn clone_flags_index() -> u32 {
    if std::env::consts::ARCH == "s390x" { 1 } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(profile: &Value) -> Vec<String> {
        profile["syscalls"][0]["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()).collect()
    }

    #[test]
    fn a_capability_keeps_the_calls_it_grants() {
        let plain = runtime_default(&[]);
        assert!(denied(&plain).contains(&"mount".to_string()) && denied(&plain).contains(&"ptrace".to_string()));
        assert_eq!(plain["defaultAction"], "SCMP_ACT_ALLOW");
        let admin = runtime_default(&["CAP_SYS_ADMIN".to_string(), "CAP_SYS_PTRACE".to_string()]);
        assert!(!denied(&admin).contains(&"mount".to_string()) && !denied(&admin).contains(&"ptrace".to_string()));
        assert!(denied(&admin).contains(&"reboot".to_string()));
        assert_eq!(admin["syscalls"].as_array().unwrap().len(), 1, "namespaces stay allowed with CAP_SYS_ADMIN");
    }
}
