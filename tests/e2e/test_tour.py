"""The README as a new user follows it, and the embedded registry as other clients use it.

One `skiff up` with its default flags and ports, under a fresh HOME so its default data
directory is new; `skiff` on the PATH as the README's install step puts it there. Every
README block marked as part of the tour runs as written, in order, with nothing in between.
"""

import glob
import json
import os
import re
import signal
import ssl
import subprocess
import tempfile
import urllib.request
import hashlib

import pytest

from conftest import ROOT, free_port, skiff_binary, wait_for

README = os.path.join(ROOT, "README.md")
API = "127.0.0.1:6443"
# The http-hello function as the binary carries it.
HTTP_HELLO = os.path.join(ROOT, "examples/artifacts/http-hello.wasm")


def blocks(marker):
    """The ```sh blocks after each `<!-- tour:MARKER -->` line of the README (indented
    too, as a block inside a list item is)."""
    return re.findall(r"<!-- tour:%s -->\n[ ]*```sh\n(.*?)```" % re.escape(marker), open(README).read(), re.S)


class Tour:
    def __init__(self, home, env):
        self.home, self.env = home, env
        self.data = os.path.join(home, ".local/share/skiff")
        self.token = None

    def run(self, script, timeout=300):
        return subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)

    def kubectl(self, *args, input=None):
        env = dict(self.env, KUBECONFIG=os.path.join(self.data, "kubeconfig"))
        p = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True, env=env, timeout=60)
        assert p.returncode == 0, f"kubectl {' '.join(args)}: {p.stderr}"
        return p.stdout

    def registry(self, method, path, body=None, token=True):
        """A raw request to the embedded registry: (status, headers, parsed JSON or bytes)."""
        req = urllib.request.Request(f"https://{API}{path}", data=body, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {self.token}")
        ctx = ssl.create_default_context(cafile=os.path.join(self.data, "ca.crt"))
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
                status, headers, raw = r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            status, headers, raw = e.code, e.headers, e.read()
        try:
            return status, headers, json.loads(raw)
        except ValueError:
            return status, headers, raw

    def skopeo(self, *args):
        p = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, f"skopeo {' '.join(args)}: {p.stderr}"
        return p.stdout


@pytest.fixture(scope="module")
def tour(registry):
    home = tempfile.mkdtemp(prefix="skiff-tour-")
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "SKIFF_DATA_DIR", "XDG_DATA_HOME")}
    env.update(HOME=home, PATH=os.path.dirname(skiff_binary()) + os.pathsep + os.environ["PATH"])
    t = Tour(home, env)
    # A mirror for docker.io names, in the file a node reads at start (k3s's registries.yaml).
    os.makedirs(t.data)
    with open(os.path.join(t.data, "registries.yaml"), "w") as f:
        f.write(f'mirrors:\n  docker.io:\n    endpoint: ["http://{registry.host}"]\n')
    [cluster] = blocks("cluster")
    command = cluster.split("#")[0].strip()
    assert command == "skiff up", "the README's cluster step is `skiff up` with its defaults"
    log_path = os.path.join(home, "skiff-up.log")
    log = open(log_path, "wb")
    proc = subprocess.Popen(["bash", "-c", command], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(lambda: proc.poll() is None and "is up" in open(log_path).read() or proc.poll() is not None, 60, "skiff up to say it is up")
    assert proc.poll() is None, open(log_path).read()
    t.token = open(os.path.join(t.data, "token")).read().strip()
    yield t
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    # Container pods outlive `skiff up` (as kubelet's do); none may be left for later tests.
    subprocess.run([skiff_binary(), "killall", "--data-dir", t.data], check=False, capture_output=True)
    log.close()


def test_the_install_step_builds_this_binary():
    assert blocks("install") == ["cargo install --locked --path crates/skiff\n"]
    manifest = open(os.path.join(ROOT, "crates/skiff/Cargo.toml")).read()
    assert 'name = "skiff"' in manifest and "[[bin]]" not in manifest, "the package's binary is `skiff`"


def test_the_readme_tour_runs_as_written(tour):
    commands = blocks("commands")
    assert len(commands) >= 2, "the tour and the Services section are both marked"
    # One shell for them all, as one terminal: the first block's `export` holds for the rest.
    script = "\n".join(commands)
    p = tour.run(script)
    out = p.stdout
    assert p.returncode == 0, f"the README tour failed:\n{script}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    assert "Hello from a Wasm pod!" in out                  # a ClusterIP Service on port 80, under the default ports
    assert "Ahoy, Skiff!" in out                            # the WASI command Job's log
    assert re.search(r"Hello from http-hello-\S+!", out)  # the ClusterIP, and the ingress on 127.0.0.1:80
    assert '"gitVersion"' in out                            # the kubernetes Service on 10.43.0.1:443
    assert re.search(r"^10\.43\.\d+\.\d+$", out, re.M), out  # cluster DNS
    assert "successfully rolled out" in out
    assert "a Wasm function, which said:\nHello from a Wasm pod!" in out, out   # the mixed example: a container calls a Wasm function
    assert "search default.svc.cluster.local svc.cluster.local cluster.local" in out   # the container's resolv.conf
    assert re.search(r"Hello from hello-fn-\S+!", out), out                      # the Helm chart's function
    assert "Rollback was a success" in out


def test_registry_refuses_unauthenticated_and_corrupt_pushes(tour):
    status, headers, body = tour.registry("POST", "/v2/app/blobs/uploads/", token=False)
    assert status == 401 and headers["WWW-Authenticate"] == f'Bearer realm="https://{API}/v2/token",service="skiff"'
    assert body["errors"][0]["code"] == "UNAUTHORIZED"
    claimed = "sha256:" + hashlib.sha256(b"the real bytes").hexdigest()
    status, _, body = tour.registry("POST", f"/v2/app/blobs/uploads/?digest={claimed}", body=b"corrupted bytes")
    assert status == 400 and body["errors"][0]["code"] == "DIGEST_INVALID", body
    status, _, _ = tour.registry("HEAD", f"/v2/app/blobs/{claimed}")
    assert status == 404
    status, _, body = tour.registry("GET", "/v2/_catalog")
    assert status == 200 and {"http-hello", "wasi-hello"} <= set(body["repositories"])


def run_function_pod(tour, name, image):
    """A pod of the http-hello function from `image`; returns its answer on port 8080."""
    manifest = json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                           "spec": {"runtimeClassName": "wasmtime", "containers": [{"name": "fn", "image": image, "ports": [{"containerPort": 8080}],
                                    "env": [{"name": "POD_NAME", "value": name}]}]}})
    tour.kubectl("apply", "-f", "-", input=manifest)
    ip = wait_for(lambda: (lambda p: p["status"].get("podIP") if p["status"].get("phase") == "Running" else None)(json.loads(tour.kubectl("get", "pod", name, "-o", "json"))),
                  60, f"pod {name} to run {image}")
    answer = wait_for(lambda: _get(f"http://{ip}:8080/"), 20, f"pod {name} to answer")
    tour.kubectl("delete", "pod", name, "--wait=false")
    return answer


def _get(url):
    try:
        return urllib.request.urlopen(url, timeout=2).read().decode()
    except OSError:
        return None


def test_skopeo_copies_an_image_in_and_out_and_a_pod_runs_it(tour, registry, tmp_path):
    # An artifact in a real docker-registry, copied into the cluster's registry by skopeo.
    subprocess.run([skiff_binary(), "push", HTTP_HELLO, f"{registry.host}/outside/hello:v1"], check=True, capture_output=True, timeout=60)
    creds = f"skiff:{tour.token}"
    # skopeo takes a directory of CA certificates (and would read the data dir's keys as client ones).
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.crt").write_bytes(open(os.path.join(tour.data, "ca.crt"), "rb").read())
    tour.skopeo("copy", "--src-tls-verify=false", "--dest-creds", creds, "--dest-cert-dir", str(certs),
                f"docker://{registry.host}/outside/hello:v1", f"docker://{API}/copied/hello:v1")
    assert run_function_pod(tour, "copied", "registry.skiff.internal/copied/hello:v1") == "Hello from copied!\n"
    # And out again, to the docker-registry, byte for byte.
    tour.skopeo("copy", "--src-creds", creds, "--src-cert-dir", str(certs), "--dest-tls-verify=false",
                f"docker://{API}/copied/hello:v1", f"docker://{registry.host}/back/hello:v1")
    ours = tour.skopeo("inspect", "--raw", "--creds", creds, "--cert-dir", str(certs), f"docker://{API}/copied/hello:v1")
    theirs = tour.skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/back/hello:v1")
    assert ours == theirs


def test_a_node_pulls_docker_io_names_from_its_mirror(tour, registry):
    subprocess.run([skiff_binary(), "push", HTTP_HELLO, f"{registry.host}/library/mirrored:v1"], check=True, capture_output=True, timeout=60)
    # `mirrored:v1` is docker.io/library/mirrored:v1, which only the mirror has.
    assert run_function_pod(tour, "mirrored", "mirrored:v1") == "Hello from mirrored!\n"


def test_oras_pushes_and_pulls_through_token_authentication(tour, tmp_path):
    import oras.client
    note = tmp_path / "note.txt"
    note.write_text("carried by oras\n")
    # The default (token) flow: the registry's Bearer challenge, then its token endpoint.
    c = oras.client.OrasClient(hostname=API, tls_verify=os.path.join(tour.data, "ca.crt"))
    c.login(username="skiff", password=tour.token, hostname=API, tls_verify=os.path.join(tour.data, "ca.crt"))
    old = os.getcwd()
    os.chdir(tmp_path)  # oras names layers by their paths as given
    try:
        assert c.push(target=f"{API}/notes/oras:v1", files=["note.txt"]).status_code == 201
    finally:
        os.chdir(old)
    [pulled] = c.pull(target=f"{API}/notes/oras:v1", outdir=str(tmp_path / "out"))
    assert open(pulled).read() == "carried by oras\n"


def test_docker_registry_serves_it_as_a_pull_through_cache(tour, tmp_path):
    port = free_port()
    conf = tmp_path / "proxy.yml"
    conf.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}/blobs\nhttp:\n  addr: 127.0.0.1:{port}\n"
                    f"proxy:\n  remoteurl: https://{API}\n  username: skiff\n  password: {tour.token}\n")
    # Go reads its trusted roots from SSL_CERT_FILE: the cluster's CA.
    env = dict(os.environ, SSL_CERT_FILE=os.path.join(tour.data, "ca.crt"))
    log = open(tmp_path / "proxy.log", "wb")
    proc = subprocess.Popen(["docker-registry", "serve", str(conf)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _get(f"http://127.0.0.1:{port}/v2/") is not None, 20, "the pull-through docker-registry")
        through = tour.skopeo("inspect", "--raw", "--tls-verify=false", f"docker://127.0.0.1:{port}/wasi-hello:v1")
        status, _, direct = tour.registry("GET", "/v2/wasi-hello/manifests/v1")
        assert status == 200 and json.loads(through) == direct
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_load_balancer_on_port_80_takes_it_from_the_ingress_and_gives_it_back(tour):
    node = json.loads(tour.kubectl("get", "nodes", "-o", "json"))["items"][0]
    node_ip = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
    # The ingress holds port 80 on the node's address: no rule matches, so it answers 404.
    wait_for(lambda: _status(f"http://{node_ip}/") == 404, 20, "the ingress on the node's address")
    docs = [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "lb"},
         "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "lb"}},
                  "template": {"metadata": {"labels": {"app": "lb"}},
                               "spec": {"runtimeClassName": "wasmtime", "containers": [{"name": "fn", "image": "registry.skiff.internal/http-hello:v1",
                                        "ports": [{"containerPort": 8080}], "env": [{"name": "POD_NAME", "value": "the lb pod"}]}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb"},
         "spec": {"type": "LoadBalancer", "selector": {"app": "lb"}, "ports": [{"port": 80, "targetPort": 8080}]}}]
    # A stream of objects, not a `kind: List` (whose validation kubectl fetches as protobuf).
    tour.kubectl("create", "-f", "-", input="\n".join(json.dumps(d) for d in docs))
    svc = wait_for(lambda: (lambda s: s if s.get("status", {}).get("loadBalancer", {}).get("ingress") else None)(json.loads(tour.kubectl("get", "svc", "lb", "-o", "json"))),
                   30, "the LoadBalancer's address")
    assert node_ip in [i["ip"] for i in svc["status"]["loadBalancer"]["ingress"]]
    assert wait_for(lambda: _get(f"http://{node_ip}/"), 30, "the LoadBalancer on the node's port 80") == "Hello from the lb pod!\n"
    if node_ip != "127.0.0.1":
        assert _status("http://127.0.0.1/") == 404, "the ingress keeps 127.0.0.1"
    tour.kubectl("delete", "svc", "lb")
    wait_for(lambda: _status(f"http://{node_ip}/") == 404, 30, "the ingress to take port 80 back")
    tour.kubectl("delete", "deploy", "lb")


def _status(url):
    try:
        return urllib.request.urlopen(url, timeout=2).status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def kubectl_result(tour, *args, input=None):
    env = dict(tour.env, KUBECONFIG=os.path.join(tour.data, "kubeconfig"))
    return subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True, env=env, timeout=60)


def test_exec_runs_the_containers_command_in_its_sandbox(tour):
    # A long-running command pod with an env var and a ConfigMap volume.
    tour.kubectl("create", "configmap", "exec-cfg", "--from-literal=greeting=Hi")
    manifest = json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "exec-target"},
                           "spec": {"runtimeClassName": "wasmtime", "containers": [{"name": "main", "image": "registry.skiff.internal/wasi-hello:v1",
                                    "args": ["sleep", "3600"], "env": [{"name": "NAME", "value": "exec"}],
                                    "volumeMounts": [{"name": "cfg", "mountPath": "/config"}]}],
                                    "volumes": [{"name": "cfg", "configMap": {"name": "exec-cfg"}}]}})
    tour.kubectl("apply", "-f", "-", input=manifest)
    wait_for(lambda: json.loads(tour.kubectl("get", "pod", "exec-target", "-o", "json"))["status"].get("phase") == "Running", 60, "the exec target to run")
    # kubectl exec (WebSocket v5.channel.k8s.io): argv, env and volumes of the container.
    p = kubectl_result(tour, "exec", "exec-target", "--", "wasi-hello", "hello", "cat", "/config/greeting")
    assert p.returncode == 0, p.stderr
    assert "Hi, exec!" in p.stdout and "/config/greeting: Hi" in p.stdout
    # stdin, and the exit code.
    p = kubectl_result(tour, "exec", "-i", "exec-target", "--", "wasi-hello", "stdin", input="through stdin\n")
    assert (p.returncode, p.stdout) == (0, "through stdin\n"), p.stderr
    p = kubectl_result(tour, "exec", "exec-target", "--", "wasi-hello", "exit", "3")
    assert p.returncode == 3 and "exit code 3" in p.stderr
    p = kubectl_result(tour, "exec", "exec-target", "--", "wasi-hello", "bogus")
    assert p.returncode == 2 and "unknown command" in p.stderr
    # The Python client's stream() (v4.channel.k8s.io, text frames for stdin).
    from kubernetes import client, config
    from kubernetes.stream import stream
    api = client.CoreV1Api(config.new_client_from_config(config_file=os.path.join(tour.data, "kubeconfig")))
    out = stream(api.connect_get_namespaced_pod_exec, "exec-target", "default", command=["wasi-hello", "hello"],
                 stderr=True, stdin=False, stdout=True, tty=False)
    assert "Hi, exec!" in out
    session = stream(api.connect_get_namespaced_pod_exec, "exec-target", "default", command=["wasi-hello", "stdin"],
                     stderr=True, stdin=True, stdout=True, tty=False, _preload_content=False)
    session.write_stdin("from python\n")
    assert session.read_stdout(timeout=10) == "from python\n"
    session.close()
    # Clear refusals, and nothing left behind.
    p = kubectl_result(tour, "exec", "exec-target", "-c", "missing", "--", "wasi-hello")
    assert p.returncode != 0 and "container missing is not valid for pod exec-target" in p.stderr
    p = kubectl_result(tour, "exec", "no-such-pod", "--", "wasi-hello")
    assert p.returncode != 0 and 'pods "no-such-pod" not found' in p.stderr
    tour.kubectl("run", "exec-fn", "--image=registry.skiff.internal/http-hello:v1", "--port=8080")
    wait_for(lambda: json.loads(tour.kubectl("get", "pod", "exec-fn", "-o", "json"))["status"].get("phase") == "Running", 60, "the function pod to run")
    p = kubectl_result(tour, "exec", "exec-fn", "--", "anything")
    assert p.returncode != 0 and "wasi:http function, which has no command to exec" in p.stderr
    assert json.loads(tour.kubectl("get", "pod", "exec-target", "-o", "json"))["status"]["containerStatuses"][0]["restartCount"] == 0
    tour.kubectl("delete", "pod", "exec-target", "exec-fn", "--wait=false")


def test_kubectl_cp_copies_in_and_out_of_a_wasm_pods_volumes(tour, tmp_path):
    # The node serves kubectl cp's tar over the pod's volumes: a Wasm image has no tar.
    tour.kubectl("create", "configmap", "cp-cfg", "--from-literal=greeting=Ahoy")
    manifest = json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "cp-target"},
                           "spec": {"runtimeClassName": "wasmtime", "containers": [{"name": "main", "image": "registry.skiff.internal/wasi-hello:v1",
                                    "args": ["sleep", "3600"], "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "cfg", "mountPath": "/config"}]}],
                                    "volumes": [{"name": "data", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "cp-cfg"}}]}})
    tour.kubectl("apply", "-f", "-", input=manifest)
    wait_for(lambda: json.loads(tour.kubectl("get", "pod", "cp-target", "-o", "json"))["status"].get("phase") == "Running", 60, "the cp target to run")
    (tmp_path / "up.txt").write_text("uploaded\n")
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "leaf.txt").write_text("leaf\n")
    p = kubectl_result(tour, "cp", str(tmp_path / "up.txt"), "cp-target:/data/up.txt")
    assert p.returncode == 0, p.stderr
    p = kubectl_result(tour, "cp", str(tmp_path / "tree"), "cp-target:/data/tree")
    assert p.returncode == 0, p.stderr
    # The guest sees what was copied in.
    p = kubectl_result(tour, "exec", "cp-target", "--", "wasi-hello", "cat", "/data/up.txt", "ls", "/data/tree")
    assert "uploaded" in p.stdout and "leaf.txt" in p.stdout, p.stdout + p.stderr
    p = kubectl_result(tour, "cp", "cp-target:/config/greeting", str(tmp_path / "greeting"))
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "greeting").read_text() == "Ahoy"
    p = kubectl_result(tour, "cp", "cp-target:/data/tree", str(tmp_path / "back"))
    assert p.returncode == 0 and (tmp_path / "back" / "leaf.txt").read_text() == "leaf\n", p.stderr
    # A read-only volume refuses, and a path outside every volume does not exist.
    p = kubectl_result(tour, "cp", str(tmp_path / "up.txt"), "cp-target:/config/up.txt")
    assert p.returncode != 0 and "Read-only file system" in p.stderr, p.stderr
    p = kubectl_result(tour, "cp", "cp-target:/etc/passwd", str(tmp_path / "passwd"))
    assert p.returncode != 0 and not (tmp_path / "passwd").exists(), p.stderr
    tour.kubectl("delete", "pod", "cp-target", "--wait=false")


OLDER_KUBECTLS = sorted(glob.glob("/usr/lib/google-cloud-sdk/bin/kubectl.1.2[789]"))


@pytest.mark.skipif(not OLDER_KUBECTLS, reason="the machine image's kubectl 1.27–1.29 are not installed")
def test_kubectl_before_1_30_execs_attaches_and_copies_over_spdy(tour, tmp_path):
    # Before 1.30 kubectl speaks SPDY for exec, attach and cp.
    tour.kubectl("create", "configmap", "spdy-cfg", "--from-literal=greeting=Howdy")
    manifest = json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "spdy-target"},
                           "spec": {"runtimeClassName": "wasmtime", "containers": [{"name": "main", "image": "registry.skiff.internal/wasi-hello:v1",
                                    "args": ["sleep", "3600"], "env": [{"name": "NAME", "value": "spdy"}],
                                    "volumeMounts": [{"name": "cfg", "mountPath": "/config"}, {"name": "data", "mountPath": "/data"}]}],
                                    "volumes": [{"name": "cfg", "configMap": {"name": "spdy-cfg"}}, {"name": "data", "emptyDir": {}}]}})
    tour.kubectl("apply", "-f", "-", input=manifest)
    wait_for(lambda: json.loads(tour.kubectl("get", "pod", "spdy-target", "-o", "json"))["status"].get("phase") == "Running", 60, "the SPDY target to run")
    env = dict(tour.env, KUBECONFIG=os.path.join(tour.data, "kubeconfig"))
    run = lambda kubectl, *args, input=None: subprocess.run([kubectl, *args], input=input, capture_output=True, text=True, env=env, timeout=60)
    for kubectl in OLDER_KUBECTLS:
        p = run(kubectl, "exec", "spdy-target", "--", "wasi-hello", "hello")
        assert p.returncode == 0 and "Howdy, spdy!" in p.stdout, (kubectl, p.stdout, p.stderr)
        p = run(kubectl, "exec", "-i", "spdy-target", "--", "wasi-hello", "stdin", input="piped in\n")
        assert p.returncode == 0 and p.stdout == "piped in\n", (kubectl, p.stdout, p.stderr)
        p = run(kubectl, "exec", "spdy-target", "--", "wasi-hello", "exit", "3")
        assert p.returncode == 3, (kubectl, p.stderr)
        (tmp_path / "up.txt").write_text(kubectl)
        p = run(kubectl, "cp", str(tmp_path / "up.txt"), "spdy-target:/data/up.txt")
        assert p.returncode == 0, (kubectl, p.stderr)
        p = run(kubectl, "cp", "spdy-target:/data/up.txt", str(tmp_path / "down.txt"))
        assert p.returncode == 0 and (tmp_path / "down.txt").read_text() == kubectl, (kubectl, p.stderr)
    tour.kubectl("delete", "pod", "spdy-target", "--wait=false")


def test_attach_follows_a_running_commands_output(tour):
    # A command that waits, greets twice, and exits: attach sees the greetings, and ends
    # when the run does.
    manifest = json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "attach-target"},
                           "spec": {"runtimeClassName": "wasmtime", "restartPolicy": "Never",
                                    "containers": [{"name": "main", "image": "registry.skiff.internal/wasi-hello:v1",
                                                    "args": ["sleep", "6", "hello", "sleep", "0.5", "hello"],
                                                    "env": [{"name": "NAME", "value": "attach"}]}]}})
    tour.kubectl("apply", "-f", "-", input=manifest)
    wait_for(lambda: json.loads(tour.kubectl("get", "pod", "attach-target", "-o", "json"))["status"].get("phase") == "Running", 60, "the attach target to run")
    # Its stdin is refused with the reason.
    p = kubectl_result(tour, "attach", "-i", "attach-target", input="")
    assert p.returncode != 0 and "a Wasm guest's stdin is empty" in p.stderr, p.stderr
    p = kubectl_result(tour, "attach", "attach-target", "-c", "main")
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("Hello, attach!") == 2, p.stdout
    # A finished pod cannot be attached to.
    wait_for(lambda: json.loads(tour.kubectl("get", "pod", "attach-target", "-o", "json"))["status"].get("phase") == "Succeeded", 60, "the attach target to finish")
    p = kubectl_result(tour, "attach", "attach-target")
    assert p.returncode != 0 and "in a completed pod" in p.stderr, p.stderr
    tour.kubectl("delete", "pod", "attach-target", "--wait=false")


def test_port_forward_reaches_a_wasm_pods_listener(tour):
    tour.kubectl("run", "pf-fn", "--image=registry.skiff.internal/http-hello:v1", "--port=8080", "--env=POD_NAME=pf-fn")
    wait_for(lambda: json.loads(tour.kubectl("get", "pod", "pf-fn", "-o", "json"))["status"].get("phase") == "Running", 60, "the function pod to run")
    env = dict(tour.env, KUBECONFIG=os.path.join(tour.data, "kubeconfig"))
    # :8080 and a port nothing listens on, through one kubectl (SPDY/3.1, portforward.k8s.io).
    proc = subprocess.Popen(["kubectl", "port-forward", "pod/pf-fn", ":8080", ":9"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        local = {}
        while len(local) < 2:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            m = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)", line)
            if m:
                local[m.group(2)] = int(m.group(1))
        for _ in range(3):  # one connection after another, each its own stream pair
            assert "Hello from pf-fn!" in urllib.request.urlopen(f"http://127.0.0.1:{local['8080']}/", timeout=10).read().decode()
        body = os.urandom(3 * 1024 * 1024)
        req = urllib.request.Request(f"http://127.0.0.1:{local['8080']}/echo", data=body, method="POST")
        assert urllib.request.urlopen(req, timeout=30).read() == body, "a large body crosses both ways"
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{local['9']}/", timeout=10).read()
            raise AssertionError("nothing listens on port 9")
        except OSError:
            pass
        assert proc.poll() is None
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "error forwarding port 9 to pod default/pf-fn" in err and "refused" in err, err
    # The Python client forwards over WebSocket (a data and an error channel per port).
    from kubernetes import client as k8s, config as k8s_config
    from kubernetes.stream import portforward
    api = k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=os.path.join(tour.data, "kubeconfig")))
    forward = portforward(api.connect_get_namespaced_pod_portforward, "pf-fn", "default", ports="8080,9")
    sock = forward.socket(8080)
    sock.setblocking(True)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: pf-fn\r\nConnection: close\r\n\r\n")
    reply = b""
    while chunk := sock.recv(65536):
        reply += chunk
    assert b"Hello from pf-fn!" in reply, reply
    wait_for(lambda: forward.error(9), 10, "the refused port's error")
    assert "refused" in forward.error(9), forward.error(9)
    forward.close()
    tour.kubectl("delete", "pod", "pf-fn", "--wait=false")
