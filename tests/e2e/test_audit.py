"""The audit log, end to end: `skiff server` appends Kubernetes' audit.k8s.io/v1 Events to
audit.log in its data directory, on by default with a policy that logs every write and
every read of a credential and never a body; `--audit-policy-file` takes Kubernetes' own
Policy format."""

import base64
import json
import os
import subprocess
import tempfile
import time

import pytest

from conftest import Cluster, skiff_binary, wait_for


def events(cluster, **match):
    """The audit events so far whose fields (dotted paths) equal `match`."""
    found = []
    with open(os.path.join(cluster.data_dir, "audit.log")) as f:
        # (The last line may be half written.)
        for line in f.read().split("\n")[:-1]:
            event = json.loads(line)
            def field(path):
                value = event
                for part in path.split("__"):
                    value = value.get(part) if isinstance(value, dict) else None
                return value
            if all(field(k) == v for k, v in match.items()):
                found.append(event)
    return found


def logged(cluster, timeout=10, **match):
    """Waits for the writer (it is off the request path) to write a matching event."""
    return wait_for(lambda: events(cluster, **match), timeout, f"an audit event with {match}")


def test_writes_and_refusals_are_logged_without_bodies(cluster, namespace):
    cluster.kubectl("-n", namespace, "create", "configmap", "audited", "--from-literal=colour=ultramarine")
    [event] = logged(cluster, verb="create", objectRef__namespace=namespace, objectRef__name="audited")
    assert event["apiVersion"] == "audit.k8s.io/v1" and event["kind"] == "Event"
    assert event["level"] == "Metadata" and event["stage"] == "ResponseComplete"
    assert event["objectRef"] == {"resource": "configmaps", "namespace": namespace, "name": "audited", "apiGroup": "", "apiVersion": "v1"}
    assert event["user"]["username"] == "system:admin" and "system:masters" in event["user"]["groups"]
    assert event["responseStatus"]["code"] == 201
    assert event["userAgent"].startswith("kubectl") and event["sourceIPs"] == ["127.0.0.1"]
    assert event["annotations"]["authorization.k8s.io/decision"] == "allow"
    assert event["requestReceivedTimestamp"] <= event["stageTimestamp"] and event["requestReceivedTimestamp"].endswith("Z")
    assert "requestObject" not in event and "responseObject" not in event
    # Reads are not logged by default, but for Secrets, ConfigMaps and tokens.
    cluster.kubectl("get", "namespace", namespace)
    cluster.kubectl("-n", namespace, "create", "secret", "generic", "hush", "--from-literal=word=swordfish")
    cluster.kubectl("-n", namespace, "get", "secret", "hush")
    logged(cluster, verb="get", objectRef__resource="secrets", objectRef__name="hush")
    assert not events(cluster, verb="get", objectRef__resource="namespaces", objectRef__name=namespace)
    # An impersonated user refused: who asked, as whom, and Kubernetes' reason.
    p = cluster.kubectl("-n", namespace, "delete", "configmap", "audited", "--as", "mallory", check=False)
    assert p.returncode != 0
    [refused] = logged(cluster, verb="delete", objectRef__name="audited", responseStatus__code=403)
    assert refused["user"]["username"] == "system:admin" and refused["impersonatedUser"]["username"] == "mallory"
    assert refused["annotations"]["authorization.k8s.io/decision"] == "forbid"
    assert refused["responseStatus"]["reason"] == "Forbidden" and "mallory" in refused["responseStatus"]["message"]
    # No credentials at all: 401, logged with no user.
    status, _ = cluster.raw("POST", f"/api/v1/namespaces/{namespace}/configmaps", {"metadata": {"name": "x"}}, token="")
    assert status == 401
    [anonymous] = logged(cluster, verb="create", objectRef__namespace=namespace, responseStatus__code=401)
    assert anonymous["user"] == {}
    # The secret's value is nowhere in the log, plain or encoded.
    text = open(os.path.join(cluster.data_dir, "audit.log")).read()
    assert "swordfish" not in text and base64.b64encode(b"swordfish").decode() not in text


POLICY = """
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
omitManagedFields: true
rules:
  - level: RequestResponse
    resources: [{group: "", resources: [configmaps, secrets]}]
  - level: Metadata
    verbs: [watch]
"""


@pytest.fixture(scope="module")
def policed():
    """A control plane logging by POLICY."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "policy.yaml")
        open(path, "w").write(POLICY)
        c = Cluster(d, ["--audit-policy-file", path], command="server").start()
        yield c
        c.stop()


def test_a_policy_file_sets_levels_and_stages(policed):
    policed.kubectl("create", "configmap", "full", "--from-literal=colour=vermilion")
    [event] = logged(policed, verb="create", objectRef__name="full")
    assert event["level"] == "RequestResponse"
    assert event["requestObject"]["data"] == {"colour": "vermilion"}
    assert event["responseObject"]["metadata"]["uid"] and "managedFields" not in event["responseObject"]["metadata"]
    # Secrets stay at Metadata whatever the policy asks.
    policed.kubectl("create", "secret", "generic", "kept", "--from-literal=word=swordfish")
    [secret] = logged(policed, verb="create", objectRef__name="kept")
    assert secret["level"] == "Metadata" and "requestObject" not in secret
    assert "swordfish" not in open(os.path.join(policed.data_dir, "audit.log")).read()
    # A watch is logged when its answer starts and again when it ends.
    policed.kubectl("get", "pods", "--watch", "--request-timeout=2s", check=False)
    def kubectl_watch(stage):
        return [e for e in events(policed, verb="watch", objectRef__resource="pods", stage=stage) if e["userAgent"].startswith("kubectl")]
    [started] = wait_for(lambda: kubectl_watch("ResponseStarted"), 10, "the watch's ResponseStarted")
    [completed] = wait_for(lambda: kubectl_watch("ResponseComplete"), 10, "the watch's ResponseComplete")
    assert started["auditID"] == completed["auditID"] and completed["stageTimestamp"] >= started["stageTimestamp"]
    # Unlisted requests are not logged.
    policed.kubectl("get", "namespaces")
    assert not events(policed, verb="list", objectRef__resource="namespaces")


def test_a_bad_policy_file_stops_the_server_with_the_reason():
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "policy.yaml")
        open(path, "w").write("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: Loud\n")
        p = subprocess.run([skiff_binary(), "server", "--data-dir", d, "--listen", "127.0.0.1:0", "--audit-policy-file", path],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode != 0
        assert "--audit-policy-file" in p.stderr and "Loud" in p.stderr, p.stderr
