"""OCI container pods beside Wasm pods, end to end: a real `skiff up` as root runs images
the tests build (busybox layers) and push to a real docker-registry, with crun (or runc),
the Debian CNI plugins and overlayfs; the real kubectl drives it."""

import os
import subprocess
import time
import urllib.request

import pytest

import oci_image
from conftest import example_wasm, one_node_cluster, skiff_binary, wait_for
from test_agent import agent_get, container_status, create, pod, wait_phase


@pytest.fixture(scope="module")
def oci_cluster(registry):
    with one_node_cluster("oci-node") as c:
        yield c
        c.stop()
        # `skiff killall` (in stop) stops the containers the agent left: nothing of them is left.
        assert not os.listdir(os.path.join(c.data_dir, "agent", "oci", "containers"))
        assert not os.listdir(os.path.join(c.data_dir, "agent", "oci", "sandboxes"))


@pytest.fixture(scope="module")
def busybox(registry):
    return oci_image.busybox_image(registry.host)


@pytest.fixture
def ns(oci_cluster):
    name = f"c-{os.urandom(3).hex()}"
    oci_cluster.kubectl("create", "namespace", name)
    return name


def container_pod(name, image, command=None, restart="Always", labels=None, **container):
    c = {"name": "main", "image": image, **container}
    if command:
        c["command"] = command
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {"app": name}},
            "spec": {"restartPolicy": restart, "terminationGracePeriodSeconds": 2, "containers": [c]}}


def get(url, timeout=5):
    return urllib.request.urlopen(url, timeout=timeout).read().decode()


def answers(url):
    try:
        return get(url, timeout=2)
    except OSError:
        return None


def test_node_offers_the_oci_runtime(oci_cluster):
    node = oci_cluster.json("get", "node", "oci-node")
    runtime = node["metadata"]["labels"]["skiff.dev/runtime-oci"]
    assert runtime in ("crun", "runc")
    assert f"{runtime}://" in node["status"]["nodeInfo"]["containerRuntimeVersion"]
    assert oci_cluster.json("get", "runtimeclass", runtime)["handler"] == runtime


def test_container_serves_at_its_pod_ip_and_through_services(oci_cluster, busybox, ns):
    web = container_pod("web", busybox, ports=[{"containerPort": 8080}],
                        readinessProbe={"exec": {"command": ["cat", "/www/index.html"]}, "periodSeconds": 1})
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}
    create(oci_cluster, ns, web, service)
    running = wait_for(lambda: container_status(oci_cluster, ns, "web").get("ready") and pod(oci_cluster, ns, "web"), 60, "web to be ready")
    ip = running["status"]["podIP"]
    assert get(f"http://{ip}:8080/") == "hello from a container\n"
    svc = oci_cluster.json("get", "service", "-n", ns, "web")
    assert wait_for(lambda: answers(f"http://{svc['spec']['clusterIP']}:80/"), 20, "the ClusterIP") == "hello from a container\n"
    node_port = svc["spec"]["ports"][0]["nodePort"]
    assert wait_for(lambda: answers(f"http://127.0.0.1:{node_port}/"), 20, "the NodePort") == "hello from a container\n"
    # Inside: its hostname, its /etc files, and what the image's second layer deleted.
    out = oci_cluster.kubectl("exec", "-n", ns, "web", "--", "sh", "-c", "hostname; cat /etc/resolv.conf; ls /etc").stdout
    assert out.startswith("web\n"), out
    assert f"search {ns}.svc.cluster.local svc.cluster.local cluster.local" in out and "options ndots:5" in out, out
    assert "old.txt" not in out and "passwd" in out, out
    assert container_status(oci_cluster, ns, "web")["imageID"].startswith(busybox.rsplit(":", 1)[0])


def test_two_containers_share_localhost_and_logs_follow(oci_cluster, busybox, ns):
    p = container_pod("pair", busybox)
    p["spec"]["containers"].append({"name": "client", "image": busybox, "command": ["sh", "-c",
        "until wget -qO- http://localhost:8080/ 2>/dev/null; do sleep 0.2; done; for i in 1 2 3; do echo line $i; sleep 0.5; done"]})
    p["spec"]["restartPolicy"] = "Never"
    create(oci_cluster, ns, p)
    wait_for(lambda: pod(oci_cluster, ns, "pair").get("status", {}).get("phase") == "Running", 60, "pair to run")
    out = oci_cluster.kubectl("logs", "-f", "-n", ns, "pair", "-c", "client").stdout
    assert out == "hello from a container\nline 1\nline 2\nline 3\n", out
    client_status = lambda: [c for c in pod(oci_cluster, ns, "pair")["status"]["containerStatuses"] if c["name"] == "client"][0]
    ended = wait_for(lambda: client_status().get("state", {}).get("terminated"), 30, "the client to end")
    assert ended["exitCode"] == 0 and ended["reason"] == "Completed"


def test_memory_hog_is_oom_killed(oci_cluster, busybox, ns):
    create(oci_cluster, ns, container_pod("hog", busybox, ["sh", "-c", "a=0123456789; while true; do a=$a$a; done"], restart="Never",
                                          resources={"limits": {"memory": "16Mi"}}))
    done = wait_phase(oci_cluster, ns, "hog", ["Failed"])
    terminated = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 137 and terminated["reason"] == "OOMKilled", terminated


def test_exit_codes_and_crash_loop(oci_cluster, busybox, ns):
    create(oci_cluster, ns, container_pod("three", busybox, ["sh", "-c", "echo bye; exit 3"], restart="OnFailure"))
    status = wait_for(lambda: (lambda s: s.get("state", {}).get("waiting", {}).get("reason") == "CrashLoopBackOff" and s)(container_status(oci_cluster, ns, "three")), 40, "CrashLoopBackOff")
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert oci_cluster.kubectl("logs", "-n", ns, "three", "--previous").stdout == "bye\n"


def test_deletion_kills_a_pid_1_that_ignores_sigterm(oci_cluster, busybox, ns):
    create(oci_cluster, ns, container_pod("stubborn", busybox, ["sh", "-c", "trap '' TERM; while true; do sleep 1; done"]))
    uid = wait_phase(oci_cluster, ns, "stubborn", ["Running"])["metadata"]["uid"]
    oci_cluster.kubectl("delete", "pod", "-n", ns, "stubborn", "--wait=false")
    # Grace period 2 s, then SIGKILL: gone well before the 30 s default would pass.
    wait_for(lambda: oci_cluster.kubectl("get", "pod", "-n", ns, "stubborn", check=False).returncode != 0, 20, "the pod to go")
    assert_nothing_left(oci_cluster, uid)


def assert_nothing_left(cluster, uid):
    """No netns, cgroup, sandbox, container bundle or runtime state of the pod remains."""
    def left():
        found = [p for p in [f"/var/run/netns/skiff-{uid}", f"/sys/fs/cgroup/memory/skiff/{uid}", f"/sys/fs/cgroup/pids/skiff/{uid}",
                             os.path.join(cluster.data_dir, "agent", "oci", "sandboxes", uid)] if os.path.exists(p)]
        for d in [os.path.join(cluster.data_dir, "agent", "oci", "containers"), os.path.join(cluster.data_dir, "agent", "oci", "state")]:
            found += [os.path.join(d, e) for e in (os.listdir(d) if os.path.isdir(d) else []) if e.startswith(uid)]
        return found or None
    deadline = time.time() + 15
    while time.time() < deadline and left():
        time.sleep(0.3)
    assert not left(), left()


def test_one_service_balances_over_wasm_and_container_pods(oci_cluster, busybox, registry, ns):
    wasm = f"{registry.host}/http-hello:mixed"
    subprocess.run([skiff_binary(), "push", example_wasm("wasm32-wasip2", "http-hello"), wasm], check=True, capture_output=True, timeout=60)
    function = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "fn", "labels": {"app": "mixed"}},
                "spec": {"containers": [{"name": "fn", "image": wasm, "ports": [{"containerPort": 8080}]}]}}
    box = container_pod("box", busybox, labels={"app": "mixed"}, ports=[{"containerPort": 8080}])
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "mixed"},
               "spec": {"selector": {"app": "mixed"}, "ports": [{"port": 80, "targetPort": 8080}]}}
    create(oci_cluster, ns, function, box, service)
    wait_phase(oci_cluster, ns, "fn", ["Running"])
    wait_phase(oci_cluster, ns, "box", ["Running"])
    cluster_ip = oci_cluster.json("get", "service", "-n", ns, "mixed")["spec"]["clusterIP"]
    seen = set()
    def both():
        for _ in range(10):
            body = answers(f"http://{cluster_ip}/")
            if body:
                seen.add("container" if "from a container" in body else "wasm")
        return len(seen) == 2
    wait_for(both, 30, "answers from both kinds of endpoint")
    # The container resolves the Service's name through the cluster DNS (busybox's own
    # resolver: its static wget cannot load glibc's), and reaches it.
    lookup = lambda: oci_cluster.kubectl("exec", "-n", ns, "box", "--", "nslookup", "mixed", check=False).stdout
    wait_for(lambda: (lambda out: f"Name:\tmixed.{ns}.svc.cluster.local" in out and cluster_ip in out)(lookup()), 20, "the Service's name to resolve")
    out = oci_cluster.kubectl("exec", "-n", ns, "box", "--", "wget", "-qO-", f"http://{cluster_ip}/", check=False)
    assert out.returncode == 0 and out.stdout, out.stderr


def test_bad_container_input_gets_clear_statuses(oci_cluster, busybox, registry, ns):
    other_arch = oci_image.push(registry.host, "foreign", "v1", oci_image.config(["sh"], architecture="s390x"), oci_image.busybox_layers())
    escaping = oci_image.push(registry.host, "escaping", "v1", oci_image.config(["sh"]), [oci_image.layer({"../../evil": b"x"})])
    create(oci_cluster, ns,
           container_pod("missing", f"{registry.host}/nothing-here:v1"),
           container_pod("foreign", other_arch),
           container_pod("escaping", escaping),
           container_pod("nocommand", busybox, ["/no/such/binary"]),
           container_pod("rootless", busybox, securityContext={"runAsNonRoot": True}),
           dict(container_pod("wrongclass", busybox), spec=dict(container_pod("wrongclass", busybox)["spec"], runtimeClassName="wasmtime")))
    waiting = lambda name, reason: wait_for(lambda: (lambda s: s.get("state", {}).get("waiting", {}).get("reason") == reason and s["state"]["waiting"])(container_status(oci_cluster, ns, name)), 40, f"{name} waiting with {reason}")
    assert "nothing-here" in waiting("missing", "ImagePullBackOff")["message"]
    assert "linux/s390x" in waiting("foreign", "ImagePullBackOff")["message"]
    assert "climbs out" in waiting("escaping", "CreateContainerError")["message"]
    assert "/no/such/binary" in waiting("nocommand", "CreateContainerError")["message"]
    assert "runAsNonRoot" in waiting("rootless", "CreateContainerError")["message"]
    assert 'the RuntimeClass handler "wasmtime" cannot run' in waiting("wrongclass", "CreateContainerError")["message"]
    assert not os.path.exists("/evil") and not os.path.exists(os.path.join(oci_cluster.data_dir, "evil"))


def test_stats_come_from_the_cgroup_and_attach_follows_output(oci_cluster, busybox, ns):
    create(oci_cluster, ns, container_pod("busy", busybox, ["sh", "-c", "i=0; while true; do i=$((i+1)); [ $((i % 20000)) = 0 ] && echo tick $i; done"]))
    wait_phase(oci_cluster, ns, "busy", ["Running"])

    def busy_container():
        _, summary = agent_get(oci_cluster, "/stats/summary", oci_cluster.token)
        pods = [p for p in summary["pods"] if p["podRef"] == {"name": "busy", "namespace": ns}]
        return pods and pods[0]["containers"][0]
    c = wait_for(lambda: (lambda c: c and c["cpu"]["usageCoreNanoSeconds"] > 100_000_000 and c)(busy_container()), 30, "CPU time to add up")
    assert c["memory"]["workingSetBytes"] > 0, c
    # attach follows the running container's output until the client leaves.
    p = subprocess.run(["timeout", "3", "kubectl", "--kubeconfig", oci_cluster.kubeconfig, "attach", "-n", ns, "busy"], capture_output=True, text=True)
    assert "tick " in p.stdout, (p.stdout, p.stderr)


def test_host_port_forwards_to_the_pod_until_it_goes(oci_cluster, busybox, ns):
    # hostPort is beyond the default baseline Pod Security level.
    oci_cluster.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=privileged")
    create(oci_cluster, ns, container_pod("hp", busybox, ports=[{"containerPort": 8080, "hostPort": 18089}]))
    wait_phase(oci_cluster, ns, "hp", ["Running"])
    assert wait_for(lambda: answers("http://127.0.0.1:18089/"), 20, "the host port") == "hello from a container\n"
    oci_cluster.kubectl("delete", "pod", "-n", ns, "hp")
    wait_for(lambda: "18089" not in subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True).stdout, 20, "the forwarding rules to go")
    assert answers("http://127.0.0.1:18089/") is None


def test_runtime_default_seccomp_refuses_new_namespaces(oci_cluster, busybox, ns):
    confined = container_pod("confined", busybox, ["sh", "-c", "unshare -U true; echo exit=$?"], restart="Never",
                             securityContext={"seccompProfile": {"type": "RuntimeDefault"}})
    free = container_pod("free", busybox, ["sh", "-c", "unshare -U true; echo exit=$?"], restart="Never")
    create(oci_cluster, ns, confined, free)
    for name in ["confined", "free"]:
        wait_phase(oci_cluster, ns, name, ["Succeeded"])
    confined_log = oci_cluster.kubectl("logs", "-n", ns, "confined").stdout
    assert "Operation not permitted" in confined_log and "exit=1" in confined_log, confined_log
    assert oci_cluster.kubectl("logs", "-n", ns, "free").stdout == "exit=0\n"


def test_killall_names_a_directory_that_is_no_nodes(tmp_path):
    p = subprocess.run([skiff_binary(), "killall", "--data-dir", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode != 0
    assert f"{tmp_path} is not the data directory of a node that ran containers" in p.stderr, p.stderr


def test_an_agent_restart_keeps_running_containers(oci_cluster, busybox, ns):
    """Containers outlive their agent: they serve and log while none runs, and the next
    agent adopts them as they are; one that ended meanwhile gets its real exit status.
    (Last in the module: it restarts the module's cluster.)"""
    ticker = container_pod("ticker", busybox, ["sh", "-c",
        "cat /proc/uptime > /started; httpd -p 8080 -h /www; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"])
    quitter = container_pod("quitter", busybox, ["sh", "-c", "sleep 4; echo done; exit 3"], restart="Never")
    create(oci_cluster, ns, ticker, quitter)
    before = wait_phase(oci_cluster, ns, "ticker", ["Running"])
    wait_phase(oci_cluster, ns, "quitter", ["Running"])
    started = oci_cluster.kubectl("exec", "-n", ns, "ticker", "--", "cat", "/started").stdout
    ip = before["status"]["podIP"]
    assert wait_for(lambda: answers(f"http://{ip}:8080/"), 20, "ticker to serve") == "hello from a container\n"

    oci_cluster.stop(keep_containers=True)
    # No agent: the container still serves at its address, and its shim still logs.
    assert answers(f"http://{ip}:8080/") == "hello from a container\n"
    time.sleep(5)  # the quitter ends meanwhile
    oci_cluster.start()

    after = wait_for(lambda: (lambda p: container_status(oci_cluster, ns, "ticker").get("ready") and p)(pod(oci_cluster, ns, "ticker")), 60, "ticker to be ready again")
    status = after["status"]["containerStatuses"][0]
    was = before["status"]["containerStatuses"][0]
    assert (status["restartCount"], status["containerID"], status["state"]["running"]["startedAt"]) == \
        (0, was["containerID"], was["state"]["running"]["startedAt"]), status
    assert after["status"]["podIP"] == ip
    # The same process tree and root: what it wrote at its start is there (once the new
    # agent has adopted it: until then the status is the one the old agent wrote).
    exec_started = lambda: oci_cluster.kubectl("exec", "-n", ns, "ticker", "--", "cat", "/started", check=False).stdout
    assert wait_for(exec_started, 30, "exec into the adopted container") == started
    assert answers(f"http://{ip}:8080/") == "hello from a container\n"
    # Its log has no gap: the ticks written while no agent ran are there.
    ticks = [int(line.split()[1]) for line in oci_cluster.kubectl("logs", "-n", ns, "ticker").stdout.splitlines()]
    assert ticks == list(range(len(ticks))) and len(ticks) > 25, ticks
    ended = wait_phase(oci_cluster, ns, "quitter", ["Failed"])["status"]["containerStatuses"][0]["state"]["terminated"]
    assert ended["exitCode"] == 3, ended
    assert oci_cluster.kubectl("logs", "-n", ns, "quitter").stdout == "done\n"
    # Deleting an adopted pod stops it and removes what it held.
    uid = after["metadata"]["uid"]
    oci_cluster.kubectl("delete", "pod", "-n", ns, "ticker")
    assert_nothing_left(oci_cluster, uid)
