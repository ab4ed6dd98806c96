"""End-to-end fixtures: a real `skiff up` on a temporary data dir and a free port, driven
by the real kubectl and the official Python `kubernetes` client."""

import contextlib
import os
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request

import pytest
from kubernetes import client, config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def skiff_binary():
    if os.environ.get("SKIFF_BIN"):
        return os.environ["SKIFF_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "debug", "skiff")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """One `skiff up` (or `skiff server`: the control plane alone) process and the ways
    to talk to it."""

    def __init__(self, data_dir, extra_args=(), command="up", listen="127.0.0.1"):
        self.command = command
        self.listen = listen
        self.data_dir = data_dir
        self.port = free_port()
        self.extra_args = list(extra_args)
        self.proc = None
        self.kubeconfig = os.path.join(data_dir, "kubeconfig")

    def start(self):
        self.log = open(os.path.join(self.data_dir, "skiff.log"), "ab")
        self.proc = subprocess.Popen(
            [skiff_binary(), self.command, "--data-dir", self.data_dir, "--listen", f"{self.listen}:{self.port}", *self.extra_args],
            stdout=self.log, stderr=self.log)
        ctx = None
        deadline = time.time() + 30
        while time.time() < deadline:
            assert self.proc.poll() is None, open(os.path.join(self.data_dir, "skiff.log")).read()
            try:
                if ctx is None and os.path.exists(os.path.join(self.data_dir, "ca.crt")) and os.path.exists(self.kubeconfig):
                    ctx = ssl.create_default_context(cafile=os.path.join(self.data_dir, "ca.crt"))
                if ctx is not None:
                    urllib.request.urlopen(f"https://127.0.0.1:{self.port}/readyz", context=ctx, timeout=2).read()
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError("skiff up did not become ready")
        self.token = open(os.path.join(self.data_dir, "token")).read().strip()
        self.ssl = ctx
        return self

    def stop(self, keep_containers=False):
        """Stops the process. Container pods outlive their node agent (as kubelet's do);
        unless kept for the next start to adopt, `skiff killall` stops them."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.log.close()
        if self.command in ("up", "agent") and not keep_containers:
            subprocess.run([skiff_binary(), "killall", "--data-dir", self.data_dir], check=False, capture_output=True)

    @property
    def url(self):
        return f"https://127.0.0.1:{self.port}"

    def kubectl(self, *args, input=None, check=True):
        """Runs the real kubectl against this cluster; returns the completed process."""
        env = dict(os.environ, KUBECONFIG=self.kubeconfig)
        p = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True, env=env, timeout=60)
        if check and p.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {p.stderr}")
        return p

    def skiff(self, *args, input=None, check=True):
        env = dict(os.environ, KUBECONFIG=self.kubeconfig)
        p = subprocess.run([skiff_binary(), *args], input=input, capture_output=True, text=True, env=env, timeout=60)
        if check and p.returncode != 0:
            raise AssertionError(f"skiff {' '.join(args)} failed: {p.stderr}")
        return p

    def hollow_nodes(self, prefix, count, *extra):
        """Starts `skiff agent --hollow`: simulated nodes that report bound pods running.
        Returns the process; terminating it stops the nodes' leases."""
        log = open(os.path.join(self.data_dir, f"hollow-{prefix}.log"), "ab")
        proc = subprocess.Popen([skiff_binary(), "agent", "--kubeconfig", self.kubeconfig, "--hollow", str(count), "--hollow-prefix", prefix, *extra],
                                stdout=log, stderr=log)
        def ready(name):
            p = self.kubectl("get", "node", name, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False)
            return p.returncode == 0 and p.stdout == "True"
        # Registered and Ready: a node is created first and reports its status after.
        wait_for(lambda: all(ready(f"{prefix}-{i}") for i in range(count)), 30, "hollow nodes registered and ready")
        return proc

    def json(self, *args):
        import json as _json
        return _json.loads(self.kubectl(*args, "-o", "json").stdout)

    def api(self):
        """An ApiClient of the official Python client, configured from the kubeconfig."""
        return config.new_client_from_config(config_file=self.kubeconfig)

    def raw(self, method, path, body=None, headers=None, token=None):
        """A raw HTTPS request; returns (status, parsed JSON or text)."""
        import json as _json
        data = body if isinstance(body, (bytes, type(None))) else _json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token if token is None else token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, context=self.ssl, timeout=30) as r:
                status, text = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        try:
            return status, _json.loads(text)
        except ValueError:
            return status, text


@contextlib.contextmanager
def one_node_cluster(node_name, extra_args=()):
    """A whole `skiff up` (control plane and one agent) on a fresh data dir."""
    with tempfile.TemporaryDirectory() as d:
        c = Cluster(d, ["--agent-port", "0", "--node-name", node_name, "--node-ip", "127.0.0.1", *extra_args], command="up").start()
        wait_for(lambda: c.kubectl("get", "node", node_name, check=False).returncode == 0, 30, "the node to register")
        try:
            yield c
        finally:
            c.stop()


@pytest.fixture(scope="session")
def cluster():
    """The shared control plane, whose nodes are hollow. A short watch history lets tests
    reach a compacted revision."""
    with tempfile.TemporaryDirectory() as d:
        c = Cluster(d, ["--watch-history", "1000", "--max-request-bytes", "1048576", "--node-monitor-grace-period", "15"], command="server").start()
        yield c
        c.stop()


def wait_for(check, timeout, what):
    """Polls `check` until it returns something truthy; fails naming `what` after `timeout` s."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="session")
def nodes(cluster):
    """Three hollow nodes, n-0 … n-2, for the whole session."""
    proc = cluster.hollow_nodes("n", 3)
    yield ["n-0", "n-1", "n-2"]
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def api(cluster):
    return cluster.api()


@pytest.fixture
def namespace(cluster, api):
    """A fresh namespace per test, once the controllers have set it up (its `default`
    ServiceAccount and `kube-root-ca.crt`), as Kubernetes' e2e framework waits for them:
    a watch started before would see them arrive."""
    name = f"t-{os.urandom(4).hex()}"
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    def set_up():
        accounts = [a.metadata.name for a in core.list_namespaced_service_account(name).items]
        maps = [m.metadata.name for m in core.list_namespaced_config_map(name).items]
        return "default" in accounts and "kube-root-ca.crt" in maps
    wait_for(set_up, 30, f"namespace {name} to be set up")
    return name


def example_wasm(target, name="wasi-hello"):
    """An example (wasi-hello, http-hello) built for `target` (wasm32-wasip1 or
    wasm32-wasip2) by the test command."""
    out = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    path = os.path.join(out, target, "release", f"{name}.wasm")
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing: build examples/{name} for {target} (the test command does)")
    return path


class Registry:
    """A real `docker-registry` (the CNCF distribution registry), on 127.0.0.1 unless
    told another local address."""

    def __init__(self, data_dir, address="127.0.0.1"):
        self.port = free_port()
        self.host = f"{address}:{self.port}"
        conf = os.path.join(data_dir, "registry.yml")
        with open(conf, "w") as f:
            f.write(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {data_dir}/blobs\n"
                    f"  delete:\n    enabled: true\nhttp:\n  addr: {self.host}\n")
        self.log = open(os.path.join(data_dir, "registry.log"), "ab")
        self.proc = subprocess.Popen(["docker-registry", "serve", conf], stdout=self.log, stderr=self.log)
        wait_for(lambda: self._up(), 20, "docker-registry to listen")

    def _up(self):
        try:
            urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1).read()
            return True
        except OSError:
            return False

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="session")
def registry():
    with tempfile.TemporaryDirectory() as d:
        r = Registry(d)
        yield r
        r.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure in the shared cluster, what it holds and the tail of its logs: CI keeps
    nothing else once its temporary directories are gone."""
    outcome = yield
    report = outcome.get_result()
    shared = item.funcargs.get("cluster") if hasattr(item, "funcargs") else None
    if report.when == "call" and report.failed and isinstance(shared, Cluster):
        lines = []
        ns = item.funcargs.get("namespace")
        if ns:
            lines.append(shared.kubectl("get", "all,events", "-n", ns, "-o", "wide", check=False).stdout[-6000:])
        for name in sorted(os.listdir(shared.data_dir)):
            if name.endswith(".log"):
                with open(os.path.join(shared.data_dir, name), errors="replace") as f:
                    lines.append(f"--- {name} (tail)\n" + "".join(f.readlines()[-60:]))
        report.sections.append(("shared cluster", "\n".join(lines)))
