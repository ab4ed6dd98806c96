"""ServiceAccount credentials in pods, end to end on a real `skiff up` node: every pod runs
as an account (`default` unless named) that must exist, and gets a token bound to it,
the cluster's CA and its namespace at /var/run/secrets/kubernetes.io/serviceaccount. The
token works with the official Python client within the account's RBAC rules, and stops
working once the pod is deleted."""

import base64
import json
import os
import subprocess

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from conftest import example_wasm, one_node_cluster, skiff_binary, wait_for

MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


@pytest.fixture(scope="module")
def sa_cluster(registry):
    with one_node_cluster("sa-node") as c:
        yield c


@pytest.fixture(scope="module")
def cat_image(registry):
    """wasi-hello, whose `cat PATH` prints a file."""
    ref = f"{registry.host}/wasi-hello:sa"
    subprocess.run([skiff_binary(), "push", example_wasm("wasm32-wasip2"), ref], check=True, capture_output=True, timeout=60)
    return ref


@pytest.fixture
def ns(sa_cluster):
    name = f"sa-{os.urandom(3).hex()}"
    sa_cluster.kubectl("create", "namespace", name)
    return name


def apply(c, ns, *objects, check=True):
    return c.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all(objects), check=check)


def cat_pod(name, image, account=None, automount=None):
    spec = {"runtimeClassName": "wasmtime", "restartPolicy": "Never",
            "containers": [{"name": "main", "image": image, "args": ["cat", f"{MOUNT}/token", "cat", f"{MOUNT}/namespace", "cat", f"{MOUNT}/ca.crt"]}]}
    if account:
        spec["serviceAccountName"] = account
    if automount is not None:
        spec["automountServiceAccountToken"] = automount
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def cluster_ca(c):
    with open(c.kubeconfig) as f:
        kubeconfig = yaml.safe_load(f)
    return base64.b64decode(kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"]).decode()


def finished_logs(c, ns, name):
    wait_for(lambda: c.json("get", "pod", name, "-n", ns).get("status", {}).get("phase") in ("Succeeded", "Failed"), 60, f"pod {name} to finish")
    return c.kubectl("logs", name, "-n", ns).stdout


def catted(logs):
    """The token, namespace and CA a `cat_pod` printed (each as `PATH: CONTENT`)."""
    _, rest = logs.split(f"{MOUNT}/token: ", 1)
    token, rest = rest.split(f"\n{MOUNT}/namespace: ", 1)
    namespace, ca = rest.split(f"\n{MOUNT}/ca.crt: ", 1)
    return token, namespace, ca.strip() + "\n"


def test_every_namespace_has_the_cluster_ca(sa_cluster, ns):
    def published():
        got = sa_cluster.kubectl("get", "configmap", "kube-root-ca.crt", "-n", ns, "-o", "json", check=False)
        return got.returncode == 0 and json.loads(got.stdout)["data"]["ca.crt"]
    assert wait_for(published, 10, "kube-root-ca.crt") == cluster_ca(sa_cluster)
    # Changed, it is put back.
    sa_cluster.kubectl("patch", "configmap", "kube-root-ca.crt", "-n", ns, "--type=merge", "-p", '{"data": {"ca.crt": "not a CA"}}')
    wait_for(lambda: published() == cluster_ca(sa_cluster), 10, "kube-root-ca.crt to be put back")


def test_a_pods_token_works_within_its_accounts_rules_until_the_pod_goes(sa_cluster, ns, cat_image, tmp_path):
    c = sa_cluster
    c.kubectl("create", "serviceaccount", "reader", "-n", ns)
    c.kubectl("create", "rolebinding", "reader-view", "--clusterrole=view", f"--serviceaccount={ns}:reader", "-n", ns)
    c.kubectl("create", "configmap", "settings", "--from-literal=k=v", "-n", ns)
    apply(c, ns, cat_pod("reads", cat_image, account="reader"))
    pod = c.json("get", "pod", "reads", "-n", ns)
    volume = next(v for v in pod["spec"]["volumes"] if v["name"].startswith("kube-api-access-"))
    assert [m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["mountPath"] == MOUNT] == [{"name": volume["name"], "readOnly": True, "mountPath": MOUNT}]
    assert pod["spec"]["serviceAccountName"] == pod["spec"]["serviceAccount"] == "reader"
    token, namespace, ca = catted(finished_logs(c, ns, "reads"))
    assert namespace == ns and token.count(".") == 2, (token, namespace)
    assert ca == cluster_ca(c)
    # The official client, configured as a pod's in-cluster config would be: the token and the CA.
    (tmp_path / "ca.crt").write_text(ca)
    config = client.Configuration()
    config.host = c.url
    config.ssl_ca_cert = str(tmp_path / "ca.crt")
    config.api_key = {"authorization": f"Bearer {token}"}
    core = client.CoreV1Api(client.ApiClient(config))
    assert [m.metadata.name for m in core.list_namespaced_config_map(ns).items if m.metadata.name == "settings"] == ["settings"]
    with pytest.raises(ApiException) as denied:
        core.delete_namespaced_config_map("settings", ns)
    assert denied.value.status == 403
    assert f'User "system:serviceaccount:{ns}:reader" cannot delete resource "configmaps"' in json.loads(denied.value.body)["message"]
    with pytest.raises(ApiException) as denied:
        core.list_namespaced_secret(ns)
    assert denied.value.status == 403
    # The token is bound to its pod.
    c.kubectl("delete", "pod", "reads", "-n", ns, "--wait=true")
    with pytest.raises(ApiException) as gone:
        core.list_namespaced_config_map(ns)
    assert gone.value.status == 401


def test_a_pod_naming_a_missing_account_is_forbidden(sa_cluster, ns, cat_image):
    refused = apply(sa_cluster, ns, cat_pod("lost", cat_image, account="nobody"), check=False)
    assert refused.returncode != 0
    assert f'error looking up service account {ns}/nobody: serviceaccount "nobody" not found' in refused.stderr, refused.stderr
    assert "Forbidden" in refused.stderr
    assert sa_cluster.kubectl("get", "pod", "lost", "-n", ns, check=False).returncode != 0, "nothing was created"


def test_automounting_is_turned_off_by_the_account_or_the_pod(sa_cluster, ns, cat_image):
    c = sa_cluster
    apply(c, ns, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "quiet"}, "automountServiceAccountToken": False})
    apply(c, ns, cat_pod("quiet", cat_image, account="quiet"), cat_pod("loud", cat_image, account="quiet", automount=True),
          cat_pod("off", cat_image, automount=False))
    def mounted(name):
        return any(v["name"].startswith("kube-api-access-") for v in c.json("get", "pod", name, "-n", ns)["spec"].get("volumes", []))
    assert (mounted("quiet"), mounted("loud"), mounted("off")) == (False, True, False)
    assert f"cannot read {MOUNT}/token" in finished_logs(c, ns, "quiet")
    assert catted(finished_logs(c, ns, "loud"))[1] == ns


def test_a_container_pod_gets_the_credentials_too(sa_cluster, ns, registry):
    import oci_image
    image = oci_image.busybox_image(registry.host)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "box"},
           "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": image, "command": ["cat", f"{MOUNT}/namespace", f"{MOUNT}/ca.crt"]}]}}
    apply(sa_cluster, ns, pod)
    logs = finished_logs(sa_cluster, ns, "box")
    assert logs.startswith(ns) and cluster_ca(sa_cluster) in logs, logs
