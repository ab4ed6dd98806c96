"""Clients that speak protobuf: kubectl's typed commands (every `create` generator, `run`,
`expose`, `autoscale`) and a protobuf list and watch read by an independent decoder (Python's
protobuf runtime over the same wire schema) and compared field by field with the JSON."""

import glob
import json
import os
import struct
import subprocess
import urllib.request

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.json_format import MessageToDict

from conftest import ROOT, wait_for

PROTOBUF = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"


@pytest.fixture(scope="module")
def schema():
    """Message classes of the Kubernetes wire schema Skiff bundles."""
    path = os.path.join(ROOT, "crates", "skiff-apiserver", "proto", "kubernetes.fds")
    files = descriptor_pb2.FileDescriptorSet.FromString(open(path, "rb").read())
    pool = descriptor_pool.DescriptorPool()
    for f in files.file:
        pool.Add(f)
    return lambda name: message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


def request(cluster, method, path, body=None, accept=PROTOBUF, content_type=None):
    """A raw HTTPS request; returns (status, content type, body bytes)."""
    req = urllib.request.Request(cluster.url + path, data=body, method=method)
    req.add_header("Authorization", f"Bearer {cluster.token}")
    req.add_header("Accept", accept)
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, context=cluster.ssl, timeout=30) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def unwrap(schema, body):
    """The (apiVersion, kind, raw message) of an enveloped protobuf body."""
    assert body.startswith(MAGIC), body[:16]
    unknown = schema("apimachinery.pkg.runtime.Unknown").FromString(body[len(MAGIC):])
    return unknown.typeMeta.apiVersion, unknown.typeMeta.kind, unknown.raw


def enveloped(schema, api_version, kind, message):
    unknown = schema("apimachinery.pkg.runtime.Unknown")()
    unknown.typeMeta.apiVersion = api_version
    unknown.typeMeta.kind = kind
    unknown.raw = message.SerializeToString()
    return MAGIC + unknown.SerializeToString()


def test_every_kubectl_generator(cluster, namespace, nodes):
    ns = ["-n", namespace]
    image = "registry.skiff.internal/http-hello:v1"
    commands = [
        ["create", "deployment", "web", f"--image={image}", "--replicas=0", "--port=8080"],
        ["create", "configmap", "cfg", "--from-literal=level=info"],
        ["create", "secret", "generic", "s1", "--from-literal=k=v"],
        ["create", "secret", "docker-registry", "d1", "--docker-server=r.local", "--docker-username=u", "--docker-password=p"],
        ["create", "service", "clusterip", "cs", "--tcp=80:8080"],
        ["create", "service", "nodeport", "np", "--tcp=81:8080"],
        ["create", "service", "loadbalancer", "lb", "--tcp=82:8080"],
        ["create", "service", "externalname", "en", "--external-name=example.com"],
        ["create", "serviceaccount", "robot"],
        ["create", "role", "reader", "--verb=get,list", "--resource=pods"],
        ["create", "rolebinding", "reader", "--role=reader", f"--serviceaccount={namespace}:robot"],
        ["create", "job", "once", f"--image={image}"],
        ["create", "cronjob", "tick", f"--image={image}", "--schedule=*/5 * * * *"],
        ["create", "ingress", "ing", "--rule=foo.example/bar=cs:80"],
        ["create", "quota", "q", "--hard=pods=10,services=20"],
        ["run", "p1", f"--image={image}", "--restart=Never", "--env=MODE=blue", "--labels=app=p1", "--port=8080"],
        ["expose", "deployment", "web", "--port=80", "--target-port=8080", "--name=web"],
        ["expose", "pod", "p1", "--port=8081", "--name=p1"],
        ["autoscale", "deployment", "web", "--min=1", "--max=3", "--cpu-percent=50"],
    ]
    for args in commands:
        cluster.kubectl(*args, *ns)
    cluster.kubectl("create", "namespace", f"{namespace}-extra")
    cluster.kubectl("create", "clusterrole", f"{namespace}-view", "--verb=get", "--resource=pods")
    cluster.kubectl("create", "clusterrolebinding", f"{namespace}-view", f"--clusterrole={namespace}-view", "--user=alice")

    web = cluster.json("get", "deployment", "web", *ns)
    assert web["spec"]["replicas"] == 0, "an explicit zero survives the protobuf body"
    assert web["spec"]["template"]["spec"]["containers"][0]["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]
    assert "generateName" not in web["metadata"] and "status" not in web["spec"]["template"]["spec"]
    svc = cluster.json("get", "service", "web", *ns)
    assert svc["spec"]["ports"][0]["targetPort"] == 8080 and svc["spec"]["selector"] == {"app": "web"}
    assert cluster.json("get", "service", "np", *ns)["spec"]["ports"][0]["nodePort"] >= 30000
    assert cluster.json("get", "service", "en", *ns)["spec"] ["externalName"] == "example.com"
    pod = cluster.json("get", "pod", "p1", *ns)
    assert pod["spec"]["containers"][0]["env"] == [{"name": "MODE", "value": "blue"}]
    assert pod["spec"]["restartPolicy"] == "Never" and pod["metadata"]["labels"] == {"app": "p1"}
    ing = cluster.json("get", "ingress", "ing", *ns)
    assert ing["spec"]["rules"][0]["host"] == "foo.example"
    assert ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"] == {"name": "cs", "port": {"number": 80}}
    secret = cluster.json("get", "secret", "d1", *ns)
    assert secret["type"] == "kubernetes.io/dockerconfigjson" and ".dockerconfigjson" in secret["data"]
    hpa = cluster.json("get", "hpa", "web", *ns)
    assert hpa["spec"]["maxReplicas"] == 3 and hpa["spec"]["scaleTargetRef"]["name"] == "web"
    assert cluster.json("get", "rolebinding", "reader", *ns)["subjects"][0]["name"] == "robot"
    assert cluster.json("get", "quota", "q", *ns)["spec"]["hard"] == {"pods": "10", "services": "20"}
    assert cluster.json("get", "cronjob", "tick", *ns)["spec"]["schedule"] == "*/5 * * * *"
    cluster.kubectl("scale", "deployment", "web", "--replicas=2", *ns)
    cluster.kubectl("set", "image", "deployment/web", f"http-hello={image}", *ns)
    cluster.kubectl("delete", "deployment", "web", "--cascade=foreground", *ns)
    cluster.kubectl("delete", "namespace", f"{namespace}-extra", "--wait=false")


def test_protobuf_list_and_watch_match_json(cluster, namespace, schema):
    cluster.kubectl("create", "deployment", "api", "--image=registry.skiff.internal/http-hello:v1", "--replicas=3", "-n", namespace)
    cluster.kubectl("create", "configmap", "c1", "--from-literal=a=1", "-n", namespace)
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments"

    def both():
        # The Deployment's controller keeps writing its status: read both forms of the
        # same revision of the list.
        status, ctype, body = request(cluster, "GET", path)
        assert status == 200 and ctype == PROTOBUF
        api_version, kind, raw = unwrap(schema, body)
        assert (api_version, kind) == ("apps/v1", "DeploymentList")
        from_proto = MessageToDict(schema("api.apps.v1.DeploymentList").FromString(raw), preserving_proto_field_name=True)
        from_json = json.loads(request(cluster, "GET", path, accept="application/json")[2])
        return (from_proto, from_json) if from_proto["metadata"]["resourceVersion"] == from_json["metadata"]["resourceVersion"] else None
    from_proto, from_json = wait_for(both, 30, "a protobuf and a JSON list of the same revision")
    assert len(from_proto["items"]) == len(from_json["items"]) == 1
    p, j = from_proto["items"][0], from_json["items"][0]
    for field in ["name", "namespace", "uid", "resourceVersion", "labels"]:
        assert p["metadata"][field] == j["metadata"][field], field
    assert int(p["metadata"]["generation"]) == j["metadata"]["generation"]
    assert p["spec"]["replicas"] == j["spec"]["replicas"] == 3
    assert p["spec"]["selector"] == j["spec"]["selector"]
    assert p["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == {"type": "1", "strVal": "25%"}  # int64 is a string in proto JSON
    pc, jc = p["spec"]["template"]["spec"]["containers"][0], j["spec"]["template"]["spec"]["containers"][0]
    for field in ["name", "image", "imagePullPolicy", "terminationMessagePath"]:
        assert pc[field] == jc[field], field
    # Time is whole seconds since the epoch on the wire, RFC 3339 in JSON.
    import datetime
    created = datetime.datetime.fromisoformat(j["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
    assert int(p["metadata"]["creationTimestamp"]["seconds"]) == int(created.timestamp())

    # A watch from the start (of c1: the namespace also has kube-root-ca.crt):
    # length-prefixed WatchEvents holding enveloped objects.
    status, ctype, stream = request(cluster, "GET", f"/api/v1/namespaces/{namespace}/configmaps?watch=1&timeoutSeconds=1&fieldSelector=metadata.name%3Dc1")
    assert status == 200 and ctype == PROTOBUF + ";stream=watch"
    events = []
    while stream:
        (length,) = struct.unpack(">I", stream[:4])
        events.append(schema("apimachinery.pkg.apis.meta.v1.WatchEvent").FromString(stream[4:4 + length]))
        stream = stream[4 + length:]
    assert [e.type for e in events] == ["ADDED"]
    api_version, kind, raw = unwrap(schema, events[0].object.raw)
    cm = schema("api.core.v1.ConfigMap").FromString(raw)
    assert (api_version, kind, cm.metadata.name, dict(cm.data)) == ("v1", "ConfigMap", "c1", {"a": "1"})
    assert cm.metadata.resourceVersion == cluster.json("get", "cm", "c1", "-n", namespace)["metadata"]["resourceVersion"]  # nothing writes a ConfigMap


def test_bad_protobuf_bodies(cluster, namespace, schema):
    pods = f"/api/v1/namespaces/{namespace}/pods"
    cm = schema("api.core.v1.ConfigMap")()
    cm.metadata.name = "sneaky"
    body = enveloped(schema, "v1", "ConfigMap", cm)
    status, _, text = request(cluster, "POST", pods, body[:-4], accept="application/json", content_type=PROTOBUF)
    assert status == 400, text
    status, _, text = request(cluster, "POST", pods, b"\x00\x01garbage", accept="application/json", content_type=PROTOBUF)
    assert status == 400 and b"k8s" in text
    status, _, text = request(cluster, "POST", pods, body, accept="application/json", content_type=PROTOBUF)
    assert status == 400, text
    status, _, text = request(cluster, "POST", pods, enveloped(schema, "v1", "Widget", cm), accept="application/json", content_type=PROTOBUF)
    assert status == 400 and b"Widget" in text
    for kind in ["pods", "configmaps"]:
        assert "sneaky" not in cluster.kubectl("get", kind, "-n", namespace, "-o", "name").stdout
    # A well-formed protobuf create, answered in protobuf.
    status, ctype, created = request(cluster, "POST", f"/api/v1/namespaces/{namespace}/configmaps", body, content_type=PROTOBUF)
    assert status == 201 and ctype == PROTOBUF
    _, kind, raw = unwrap(schema, created)
    assert kind == "ConfigMap" and schema("api.core.v1.ConfigMap").FromString(raw).metadata.uid
    wait_for(lambda: "sneaky" in cluster.kubectl("get", "cm", "-n", namespace, "-o", "name").stdout, 5, "the protobuf-created ConfigMap")


OLDER_KUBECTLS = sorted(glob.glob("/usr/lib/google-cloud-sdk/bin/kubectl.1.*"))


@pytest.mark.skipif(not OLDER_KUBECTLS, reason="the machine image's kubectl 1.27–1.33 are not installed")
def test_older_kubectls_create_with_protobuf(cluster, namespace):
    env = dict(os.environ, KUBECONFIG=cluster.kubeconfig)
    for kubectl in OLDER_KUBECTLS:
        name = "v" + kubectl.rsplit(".", 1)[-1]
        for args in [["create", "deployment", name, "--image=registry.skiff.internal/http-hello:v1"],
                     ["create", "configmap", name, "--from-literal=a=b"],
                     ["expose", "deployment", name, "--port=80", "--target-port=8080"],
                     ["delete", "configmap", name]]:
            p = subprocess.run([kubectl, *args, "-n", namespace], capture_output=True, text=True, env=env, timeout=60)
            assert p.returncode == 0, f"{kubectl} {args}: {p.stderr}"
        assert cluster.json("get", "service", name, "-n", namespace)["spec"]["ports"][0]["targetPort"] == 8080
