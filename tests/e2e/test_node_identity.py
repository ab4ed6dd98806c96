"""Node identity, end to end: bootstrap tokens from `skiff token create`, the
CertificateSigningRequest a joining node makes with one (approved and signed by the
controllers), client-certificate authentication, and the Node authorizer holding that
certificate to its own pods' Secrets. Keys and requests are made with the openssl CLI, as
an outside client would; the last test joins a real `skiff agent` with a token."""

import base64
import contextlib
import datetime
import json
import os
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from conftest import Cluster, skiff_binary, wait_for


def request_as(cluster, method, path, *, token=None, cert=None, body=None):
    """(status, parsed body) of a request with a bearer token or a client certificate
    (a (cert, key) pair of file paths)."""
    ctx = ssl.create_default_context(cafile=os.path.join(cluster.data_dir, "ca.crt"))
    if cert:
        ctx.load_cert_chain(*cert)
    req = urllib.request.Request(cluster.url + path, data=None if body is None else json.dumps(body).encode(), method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def certificate_request(directory, subject):
    key, csr = os.path.join(directory, "node.key"), os.path.join(directory, "node.csr")
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-subj", subject, "-keyout", key, "-out", csr], check=True, capture_output=True)
    return key, open(csr, "rb").read()


def csr_object(name, pem):
    return {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest", "metadata": {"name": name},
            "spec": {"request": base64.b64encode(pem).decode(), "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                     "usages": ["digital signature", "client auth"], "username": "someone-else"}}


@pytest.fixture
def token(cluster):
    return cluster.skiff("token", "create", "--ttl", "1h", "--kubeconfig", cluster.kubeconfig).stdout.strip()


def test_a_wrong_join_token_is_refused(cluster, token):
    assert len(token) == 23 and token[6] == "."
    wrong = token[:7] + ("0" if token[7] != "0" else "1") + token[8:]
    status, body = request_as(cluster, "GET", "/apis/certificates.k8s.io/v1/certificatesigningrequests", token=wrong)
    assert status == 401 and body["reason"] == "Unauthorized"
    status, _ = request_as(cluster, "GET", "/apis/certificates.k8s.io/v1/certificatesigningrequests", token=token)
    assert status == 200
    # A bootstrap token asks for certificates and nothing else.
    status, body = request_as(cluster, "GET", "/api/v1/namespaces/kube-system/secrets", token=token)
    assert status == 403 and "system:bootstrap:" in body["message"], body


def test_a_joining_nodes_certificate_is_its_own_identity(cluster, nodes, namespace, token):
    with tempfile.TemporaryDirectory() as d:
        key, pem = certificate_request(d, "/O=system:nodes/CN=system:node:n-1")
        status, created = request_as(cluster, "POST", "/apis/certificates.k8s.io/v1/certificatesigningrequests", token=token, body=csr_object("joiner", pem))
        assert status == 201, created
        assert created["spec"]["username"] == f"system:bootstrap:{token[:6]}", "the server names the requester"
        def signed():
            got = cluster.json("get", "csr", "joiner")
            return got.get("status", {}).get("certificate")
        certificate = base64.b64decode(wait_for(signed, 30, "the request to be approved and signed"))
        conditions = cluster.json("get", "csr", "joiner")["status"]["conditions"]
        assert [(c["type"], c["reason"]) for c in conditions] == [("Approved", "AutoApproved")]
        cert = os.path.join(d, "node.crt")
        open(cert, "wb").write(certificate)
        whoami = request_as(cluster, "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", cert=(cert, key),
                            body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})[1]
        assert whoami["status"]["userInfo"]["username"] == "system:node:n-1"
        assert "system:nodes" in whoami["status"]["userInfo"]["groups"]
        # The certificate reads the Secret of a pod bound to its node, not one of a pod on another.
        for node in ("n-0", "n-1"):
            cluster.kubectl("create", "secret", "generic", f"for-{node}", "--from-literal=k=v", "-n", namespace)
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"on-{node}", "namespace": namespace},
                   "spec": {"nodeName": node, "containers": [{"name": "app", "image": "registry.skiff.internal/none:v1",
                            "envFrom": [{"secretRef": {"name": f"for-{node}"}}]}]}}
            cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
        status, _ = request_as(cluster, "GET", f"/api/v1/namespaces/{namespace}/secrets/for-n-1", cert=(cert, key))
        assert status == 200
        status, body = request_as(cluster, "GET", f"/api/v1/namespaces/{namespace}/secrets/for-n-0", cert=(cert, key))
        assert status == 403 and "no relationship found between node 'n-1' and this object" in body["message"], body


def test_a_request_for_anything_but_a_node_certificate_is_left_pending(cluster, token):
    with tempfile.TemporaryDirectory() as d:
        _, pem = certificate_request(d, "/O=system:masters/CN=mallory")
        status, _ = request_as(cluster, "POST", "/apis/certificates.k8s.io/v1/certificatesigningrequests", token=token, body=csr_object("mallory", pem))
        assert status == 201
        time.sleep(2)
        assert "certificate" not in cluster.json("get", "csr", "mallory").get("status", {})
        bad = dict(csr_object("garbage", b"not a request"))
        status, body = request_as(cluster, "POST", "/apis/certificates.k8s.io/v1/certificatesigningrequests", token=token, body=bad)
        assert status == 422 and "spec.request" in body["message"], body


def test_the_admin_kubeconfig_carries_a_client_certificate(cluster):
    """The admin's certificate, in the kubeconfig's `skiff-cert` context, alone."""
    who = cluster.kubectl("auth", "whoami", "--context", "skiff-cert", "-o", "json")
    assert json.loads(who.stdout)["status"]["userInfo"]["username"] == "system:admin"
    assert "system:masters" in json.loads(who.stdout)["status"]["userInfo"]["groups"]


def serving_certificate(cluster, node):
    """The certificate node `node`'s agent serves, verified against the cluster CA for the
    node's InternalIP (the handshake fails otherwise)."""
    status = cluster.json("get", "node", node)["status"]
    address = next(a["address"] for a in status["addresses"] if a["type"] == "InternalIP")
    port = status["daemonEndpoints"]["kubeletEndpoint"]["Port"]
    ctx = ssl.create_default_context(cafile=os.path.join(cluster.data_dir, "ca.crt"))
    with socket.create_connection((address, port), timeout=10) as tcp, ctx.wrap_socket(tcp, server_hostname=address) as tls:
        return tls.getpeercert()


def subject_of(cert, field="subject"):
    return {k: v for rdn in cert[field] for k, v in rdn}


def test_a_serving_certificate_naming_another_address_is_not_approved(cluster, nodes, token):
    """A node asking for a serving certificate for an address that is not its own gets none."""
    with tempfile.TemporaryDirectory() as d:
        key, pem = certificate_request(d, "/O=system:nodes/CN=system:node:n-1")
        request = {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest", "metadata": {"name": "joiner-client"},
                   "spec": {"request": base64.b64encode(pem).decode(), "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                            "usages": ["digital signature", "client auth"]}}
        assert request_as(cluster, "POST", "/apis/certificates.k8s.io/v1/certificatesigningrequests", token=token, body=request)[0] == 201
        certificate = base64.b64decode(wait_for(lambda: cluster.json("get", "csr", "joiner-client").get("status", {}).get("certificate"), 30, "the client certificate"))
        cert = os.path.join(d, "node.crt")
        open(cert, "wb").write(certificate)
        serving_key, serving = os.path.join(d, "serving.key"), os.path.join(d, "serving.csr")
        subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                        "-subj", "/O=system:nodes/CN=system:node:n-1", "-addext", "subjectAltName=IP:10.99.99.99",
                        "-keyout", serving_key, "-out", serving], check=True, capture_output=True)
        request = {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest", "metadata": {"name": "n-1-elsewhere"},
                   "spec": {"request": base64.b64encode(open(serving, "rb").read()).decode(), "signerName": "kubernetes.io/kubelet-serving",
                            "usages": ["digital signature", "server auth"]}}
        status, created = request_as(cluster, "POST", "/apis/certificates.k8s.io/v1/certificatesigningrequests", cert=(cert, key), body=request)
        assert status == 201 and created["spec"]["username"] == "system:node:n-1", created
        time.sleep(2)
        assert "certificate" not in cluster.json("get", "csr", "n-1-elsewhere").get("status", {})


@contextlib.contextmanager
def joined_agent(server, d, name, *extra):
    """A real `skiff agent` joined to `server` with a bootstrap token, Ready; yields its
    data directory, and stops it and its containers at the end."""
    agent_dir = os.path.join(d, f"agent-{name}")
    token = server.skiff("token", "create", "--kubeconfig", server.kubeconfig).stdout.strip()
    log = open(os.path.join(d, f"agent-{name}.log"), "ab")
    agent = subprocess.Popen(joining_command(server, d, name, agent_dir) + ["--token", token, *extra], stdout=log, stderr=log)
    try:
        def ready():
            p = server.kubectl("get", "node", name, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False)
            return p.returncode == 0 and p.stdout == "True"
        wait_for(ready, 60, f"the joined node {name} to be Ready")
        yield agent_dir
    finally:
        agent.terminate()
        agent.wait(timeout=20)
        log.close()
        subprocess.run([skiff_binary(), "killall", "--data-dir", agent_dir], check=False, capture_output=True)


def joining_command(server, d, name, agent_dir):
    return [skiff_binary(), "agent", "--server", server.url, "--certificate-authority", os.path.join(d, "ca.crt"),
            "--node-name", name, "--node-ip", "127.0.0.1", "--agent-port", "0", "--ingress-http-port", "0",
            "--ingress-https-port", "0", "--data-dir", agent_dir]


def run_from_the_cluster_registry(server, name, node, tolerate_all=False):
    """Runs the registry's wasi-hello example on `node` to completion; its status."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"restartPolicy": "Never", "nodeName": node,
                    "containers": [{"name": "hello", "image": "registry.skiff.internal/wasi-hello:v1", "imagePullPolicy": "Always"}]}}
    if tolerate_all:
        pod["spec"]["tolerations"] = [{"operator": "Exists"}]
    server.kubectl("apply", "-f", "-", input=json.dumps(pod))
    phase = lambda: server.json("get", "pod", name)["status"].get("phase")
    wait_for(lambda: phase() in ("Succeeded", "Failed"), 60, f"pod {name} to finish")
    return server.json("get", "pod", name)["status"]


def test_an_agent_joins_with_a_token_and_runs_as_its_node():
    """A real `skiff agent` against its own control plane: a wrong token stops it with the
    reason; the right one gets it a certificate, and it registers as system:node:NAME."""
    with tempfile.TemporaryDirectory() as d:
        server = Cluster(d, ["--metric-resolution", "1s"], command="server").start()
        try:
            wrong = subprocess.run(joining_command(server, d, "joined", os.path.join(d, "wrong")) + ["--token", "abcdef.0123456789abcdef"],
                                   capture_output=True, text=True, timeout=60)
            assert wrong.returncode != 0 and "refused the join token" in wrong.stderr, wrong.stderr
            with joined_agent(server, d, "joined") as agent_dir:
                assert os.path.exists(os.path.join(agent_dir, "pki", "node.crt"))
                audit = open(os.path.join(d, "audit.log")).read()
                assert '"username":"system:node:joined"' in audit
                # The API server reaches the agent (which holds no cluster token) with its own
                # client certificate: the node's usage comes through.
                usage = lambda: server.kubectl("get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes/joined", check=False).returncode == 0
                wait_for(usage, 60, "the joined node's metrics, scraped by the API server")
                csrs = server.json("get", "csr")["items"]
                assert any(c["spec"]["username"].startswith("system:bootstrap:") for c in csrs)
                # Its serving certificate is the cluster CA's, asked for as the node itself.
                assert subject_of(serving_certificate(server, "joined"))["commonName"] == "system:node:joined"
                assert os.path.exists(os.path.join(agent_dir, "pki", "serving.crt"))
                # It holds no cluster token, yet pulls from the cluster's registry: with the
                # pod's own ServiceAccount token, made for the registry.
                status = run_from_the_cluster_registry(server, "from-the-cluster-registry", "joined")
                assert status["phase"] == "Succeeded", status
                assert status["containerStatuses"][0]["imageID"].startswith("registry.skiff.internal/wasi-hello:v1@sha256:"), status
                assert "Hello" in server.kubectl("logs", "from-the-cluster-registry").stdout
                # Such a token pulls, does not push, and ends with its pod.
                pull_token = server.kubectl("create", "token", "default", "--audience", "registry.skiff.internal", "--bound-object-kind", "Pod",
                                            "--bound-object-name", "from-the-cluster-registry").stdout.strip()
                assert request_as(server, "GET", "/v2/wasi-hello/tags/list", token=pull_token)[0] == 200
                status, body = request_as(server, "POST", "/v2/wasi-hello/blobs/uploads/", token=pull_token)
                assert status == 403 and body["errors"][0]["code"] == "DENIED", body
                api_token = server.kubectl("create", "token", "default", "--bound-object-kind", "Pod", "--bound-object-name", "from-the-cluster-registry").stdout.strip()
                assert request_as(server, "GET", "/v2/wasi-hello/tags/list", token=api_token)[0] == 401, "a token for another audience"
                server.kubectl("delete", "pod", "from-the-cluster-registry", "--wait=true")
                assert request_as(server, "GET", "/v2/wasi-hello/tags/list", token=pull_token)[0] == 401
        finally:
            server.stop()


def not_after(pem_path):
    out = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-in", pem_path], capture_output=True, text=True, check=True).stdout
    return datetime.datetime.strptime(out.strip().split("=", 1)[1], "%b %d %H:%M:%S %Y %Z").replace(tzinfo=datetime.timezone.utc)


def test_a_joined_node_renews_its_certificates_while_it_runs():
    """With certificates that live 30 s (--cluster-signing-duration), a joined agent asks
    for new ones as itself with a fifth of their life left, swaps them in while it runs,
    and goes on working past the first ones' end."""
    with tempfile.TemporaryDirectory() as d:
        server = Cluster(d, ["--cluster-signing-duration", "30s"], command="server").start()
        try:
            with joined_agent(server, d, "renewing", "--register-with-taints", "skiff.dev/wasm=true:NoSchedule,dedicated:PreferNoSchedule") as agent_dir:
                # Registered with its taints, as kubelet's --register-with-taints does.
                taints = server.json("get", "node", "renewing")["spec"]["taints"]
                assert [(t["key"], t.get("value"), t["effect"]) for t in taints] == [("skiff.dev/wasm", "true", "NoSchedule"), ("dedicated", None, "PreferNoSchedule")], taints
                client, serving = os.path.join(agent_dir, "pki", "node.crt"), os.path.join(agent_dir, "pki", "serving.crt")
                wait_for(lambda: os.path.exists(serving), 30, "the first serving certificate")
                first_client, first_serving = open(client).read(), open(serving).read()
                first_end = not_after(client)
                wait_for(lambda: open(client).read() != first_client, 45, "the client certificate renewed")
                wait_for(lambda: open(serving).read() != first_serving, 45, "the serving certificate renewed")
                renewals = [c for c in server.json("get", "csr")["items"]
                            if c["spec"]["username"] == "system:node:renewing" and c["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client-kubelet"]
                assert renewals and all(any(k["type"] == "Approved" for k in c["status"]["conditions"]) for c in renewals), renewals
                # Past the first certificate's end, the node is still itself: it runs a pod
                # and reports it, over connections only the new certificate opens.
                remaining = (first_end - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
                time.sleep(max(0, remaining) + 2)
                status = run_from_the_cluster_registry(server, "after-renewal", "renewing", tolerate_all=True)
                assert status["phase"] == "Succeeded", status
                assert subject_of(serving_certificate(server, "renewing"))["commonName"] == "system:node:renewing"
        finally:
            server.stop()
