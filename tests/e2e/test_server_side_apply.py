"""Server-side apply with the real kubectl: managedFields on every write, conflicts
between managers as Kubernetes reports them, forcing, fields an applier drops, kubectl's
move from client-side to server-side apply, and bad applies refused with nothing stored."""

import json
import textwrap

from test_kubectl import DEPLOYMENT

CONFIG = textwrap.dedent("""\
    apiVersion: v1
    kind: ConfigMap
    metadata:
      name: owned
      labels: {team: payments}
    data: {level: info, retries: "3"}
    """)


def managers(obj):
    return {(e["manager"], e["operation"], e.get("subresource", "")): e["fieldsV1"] for e in obj["metadata"].get("managedFields", [])}


def test_apply_conflicts_between_managers_and_force(cluster, namespace):
    out = cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=CONFIG).stdout
    assert "configmap/owned serverside-applied" in out
    cm = cluster.json("get", "cm", "owned", "-n", namespace, "--show-managed-fields")
    assert managers(cm) == {("kubectl", "Apply", ""): {"f:data": {"f:level": {}, "f:retries": {}}, "f:metadata": {"f:labels": {"f:team": {}}}}}

    # Another manager changing a field kubectl applied is refused, naming both.
    other = CONFIG.replace("level: info", "level: debug")
    p = cluster.kubectl("apply", "--server-side", "--field-manager", "tuner", "-n", namespace, "-f", "-", input=other, check=False)
    assert p.returncode != 0
    assert 'Apply failed with 1 conflict: conflict with "kubectl": .data.level' in p.stderr, p.stderr
    assert cluster.json("get", "cm", "owned", "-n", namespace)["data"]["level"] == "info"

    # The same value is shared without a conflict; forcing takes the field.
    cluster.kubectl("apply", "--server-side", "--field-manager", "sharer", "-n", namespace, "-f", "-", input=CONFIG)
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager", "tuner", "-n", namespace, "-f", "-", input=other)
    cm = cluster.json("get", "cm", "owned", "-n", namespace, "--show-managed-fields")
    assert cm["data"]["level"] == "debug"
    owned = managers(cm)
    assert "f:level" in owned[("tuner", "Apply", "")]["f:data"]
    assert "f:level" not in owned[("kubectl", "Apply", "")]["f:data"] and "f:level" not in owned[("sharer", "Apply", "")]["f:data"]

    # A plain update is recorded for its manager, and an apply then conflicts with it.
    cluster.kubectl("patch", "cm", "owned", "-n", namespace, "-p", '{"data":{"retries":"5"}}')
    owned = managers(cluster.json("get", "cm", "owned", "-n", namespace, "--show-managed-fields"))
    assert owned[("kubectl-patch", "Update", "")] == {"f:data": {"f:retries": {}}}
    status, body = cluster.raw("PATCH", f"/api/v1/namespaces/{namespace}/configmaps/owned?fieldManager=kubectl",
                               body=other.encode(), headers={"Content-Type": "application/apply-patch+yaml"})
    assert status == 409 and body["reason"] == "Conflict", body
    assert body["details"]["causes"] == [{"reason": "FieldManagerConflict", "message": 'conflict with "kubectl-patch" using v1', "field": ".data.retries"}]


def test_fields_an_applier_drops_are_removed_unless_another_owns_them(cluster, namespace):
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=CONFIG)
    cluster.kubectl("apply", "--server-side", "--field-manager", "sharer", "-n", namespace, "-f", "-",
                    input="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: owned}\ndata: {retries: \"3\"}\n")
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-",
                    input="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: owned}\ndata: {level: info}\n")
    cm = cluster.json("get", "cm", "owned", "-n", namespace)
    assert cm["data"] == {"level": "info", "retries": "3"}
    assert not cm["metadata"].get("labels")


def test_keyed_lists_merge_and_scaling_takes_replicas(cluster, namespace):
    deployment = DEPLOYMENT.split("---")[0]
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=deployment)
    d = cluster.json("get", "deploy", "web", "-n", namespace, "--show-managed-fields")
    applied = managers(d)[("kubectl", "Apply", "")]
    container = applied["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"web"}']
    assert '.' in container and 'k:{"containerPort":8080,"protocol":"TCP"}' in container["f:ports"]
    assert applied["f:spec"]["f:selector"] == {}
    # Defaults the server filled in are nobody's; the controllers own what they write.
    assert "f:imagePullPolicy" not in container
    assert any(m == "skiff-controllers" and sub == "status" for m, _, sub in managers(d))
    # Another client adds a container: the next apply keeps it.
    sidecar = {"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "image": "registry.local/side:1"}]}}}}
    cluster.kubectl("patch", "deploy", "web", "-n", namespace, "--field-manager", "injector", "-p", json.dumps(sidecar))
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=deployment.replace("MODE, value: blue", "MODE, value: green"))
    containers = cluster.json("get", "deploy", "web", "-n", namespace)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["web", "sidecar"]
    assert containers[0]["env"] == [{"name": "MODE", "value": "green"}]


def test_client_side_apply_moves_to_server_side(cluster, namespace):
    # kubectl apply (client-side) first, as most users start; then --server-side with a
    # change: kubectl takes over its own fields without a conflict.
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=CONFIG)
    before = managers(cluster.json("get", "cm", "owned", "-n", namespace, "--show-managed-fields"))
    assert ("kubectl-client-side-apply", "Update", "") in before
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=CONFIG.replace("level: info", "level: warn"))
    cm = cluster.json("get", "cm", "owned", "-n", namespace, "--show-managed-fields")
    assert cm["data"]["level"] == "warn"
    after = managers(cm)
    assert ("kubectl-client-side-apply", "Update", "") not in after
    assert "f:level" in after[("kubectl", "Apply", "")]["f:data"]
    last = json.loads(cm["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"])
    assert last["data"]["level"] == "warn"


def test_bad_applies_are_refused_and_store_nothing(cluster, namespace):
    path = f"/api/v1/namespaces/{namespace}/configmaps/owned"
    apply = {"Content-Type": "application/apply-patch+yaml"}
    unknown = CONFIG + "spec: {nothing: here}\n"
    p = cluster.kubectl("apply", "--server-side", "--validate=strict", "-n", namespace, "-f", "-", input=unknown, check=False)
    assert p.returncode != 0 and 'unknown field "spec"' in p.stderr, p.stderr
    status, body = cluster.raw("PATCH", path + "?fieldManager=t&fieldValidation=Strict", body=unknown.encode(), headers=apply)
    assert status == 400 and 'unknown field "spec"' in body["message"], body
    status, body = cluster.raw("PATCH", path, body=CONFIG.encode(), headers=apply)
    assert status == 422 and "fieldManager" in body["message"], body
    status, body = cluster.raw("PATCH", path + "?fieldManager=t", body=CONFIG.replace("name: owned", "name: other").encode(), headers=apply)
    assert status == 400, body
    status, body = cluster.raw("PATCH", path + "?fieldManager=t", body=b"data: [unclosed", headers=apply)
    assert status == 400, body
    status, body = cluster.raw("PATCH", path + "?force=true", body={"data": {"x": "y"}}, headers={"Content-Type": "application/merge-patch+json"})
    assert status == 400 and "force" in body["message"], body
    status, body = cluster.raw("PATCH", path + "?fieldManager=t&force=maybe", body=CONFIG.encode(), headers=apply)
    assert status == 400 and "force must be true or false" in body["message"], body
    status, body = cluster.raw("PATCH", path + "?fieldManager=" + "m" * 129, body=CONFIG.encode(), headers=apply)
    assert status == 400 and "fieldManager must be at most 128" in body["message"], body
    assert cluster.kubectl("get", "cm", "owned", "-n", namespace, check=False).returncode != 0
    # A good one creates (201), and a second one answers 200.
    status, body = cluster.raw("PATCH", path + "?fieldManager=t", body=CONFIG.encode(), headers=apply)
    assert status == 201 and body["metadata"]["managedFields"][0]["manager"] == "t", body
    status, body = cluster.raw("PATCH", path + "?fieldManager=t", body=CONFIG.encode(), headers=apply)
    assert status == 200, body


def test_concurrent_applies_that_create_the_same_object_all_land(cluster, namespace):
    from concurrent.futures import ThreadPoolExecutor
    path = f"/api/v1/namespaces/{namespace}/configmaps/raced"
    def apply(i):
        body = f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: raced}}\ndata: {{k{i}: v}}\n".encode()
        return cluster.raw("PATCH", f"{path}?fieldManager=m{i}", body=body, headers={"Content-Type": "application/apply-patch+yaml"})[0]
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(apply, range(8)))
    assert sorted(codes) == [200] * 7 + [201], codes
    cm = cluster.json("get", "cm", "raced", "-n", namespace, "--show-managed-fields")
    assert cm["data"] == {f"k{i}": "v" for i in range(8)}
    assert sorted(e["manager"] for e in cm["metadata"]["managedFields"]) == [f"m{i}" for i in range(8)]
