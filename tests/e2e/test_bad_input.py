"""Bad requests get the right Status code and a clear message, and change nothing."""

import copy
import json
import os
import random

import pytest


def revision(cluster):
    _, body = cluster.raw("GET", "/api/v1/namespaces/default/configmaps")
    return body["metadata"]["resourceVersion"]


CASES = [
    ("malformed JSON", "POST", "/api/v1/namespaces/default/configmaps", b'{"metadata": {', 400, "decoding"),
    ("malformed YAML", "POST", "/api/v1/namespaces/default/configmaps", b"metadata: [unclosed", 400, "YAML"),
    ("wrong kind for path", "POST", "/api/v1/namespaces/default/configmaps",
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}}, 400, "kind"),
    ("wrong version", "POST", "/api/v1/namespaces/default/configmaps",
        {"apiVersion": "apps/v1", "kind": "ConfigMap", "metadata": {"name": "x"}}, 400, "API version"),
    ("invalid name", "POST", "/api/v1/namespaces/default/configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Not_Valid"}}, 422, "metadata.name"),
    ("missing name", "POST", "/api/v1/namespaces/default/configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}, 422, "metadata.name"),
    ("missing container image", "POST", "/api/v1/namespaces/default/pods",
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}, 422, "image"),
    ("wrong field type", "POST", "/api/v1/namespaces/default/pods",
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": "x"}}, 400, "Pod"),
    ("missing namespace", "POST", "/api/v1/namespaces/no-such-ns/configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}, 404, "no-such-ns"),
    ("oversized body", "POST", "/api/v1/namespaces/default/configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"}, "data": {"k": "x" * 2_000_000}}, 413, "limit"),
    ("unknown resource", "GET", "/api/v1/namespaces/default/widgets", None, 404, "widgets"),
    ("unknown group", "GET", "/apis/example.com/v1/things", None, 404, "not find"),
    ("bad label selector", "GET", "/api/v1/pods?labelSelector=a%20in%20b", None, 400, "selector"),
    ("strict unknown field", "POST", "/api/v1/namespaces/default/configmaps?fieldValidation=Strict",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s"}, "bogus": 1}, 400, "unknown field"),
    ("bad cron schedule", "POST", "/apis/batch/v1/namespaces/default/cronjobs", {"apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "c"}, "spec": {"schedule": "61 * * * *", "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}}}, 422, "spec.schedule"),
    ("unknown cron time zone", "POST", "/apis/batch/v1/namespaces/default/cronjobs", {"apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "c"}, "spec": {"schedule": "0 * * * *", "timeZone": "Mars/Olympus_Mons", "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}}}, 422, "unknown time zone Mars/Olympus_Mons"),
    ("bad patch type", "PATCH", "/api/v1/namespaces/default/services/kubernetes", {"a": 1}, 415, "format"),
    ("bad json patch", "PATCH", "/api/v1/namespaces/default/services/kubernetes", [{"op": "remove", "path": "/nope"}], 400, "patch"),
]


@pytest.mark.parametrize("name,method,path,body,code,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_request(cluster, name, method, path, body, code, needle):
    before = revision(cluster)
    headers = {"Content-Type": "application/yaml"} if name == "malformed YAML" else {}
    if name == "bad json patch":
        headers = {"Content-Type": "application/json-patch+json"}
    if name == "bad patch type":
        headers = {"Content-Type": "text/plain"}
    status, reply = cluster.raw(method, path, body, headers)
    assert status == code, reply
    assert reply["kind"] == "Status" and reply["code"] == code
    assert needle.lower() in reply["message"].lower(), reply["message"]
    assert revision(cluster) == before


def test_wrong_or_missing_token(cluster):
    for token in ["", "wrong"]:
        status, reply = cluster.raw("GET", "/api/v1/namespaces", token=token)
        assert status == 401 and reply["reason"] == "Unauthorized"
    assert cluster.raw("GET", "/version", token="")[0] == 200


def test_random_bodies_never_break_the_server(cluster):
    """A property test over request bodies: mutations of a valid object either succeed
    as a whole or fail with a 4xx Status, and never a 5xx."""
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    base = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "fuzz", "labels": {"a": "b"}}, "data": {"k": "v"}}
    pieces = [None, 0, -1, 1.5, "", "x" * 300, [], {}, [1, "a"], {"$patch": "delete"}, True, "Not_Valid", "\u0000"]
    for i in range(150):
        body = json.loads(json.dumps(base))
        body["metadata"]["name"] = f"fuzz-{i}"
        for _ in range(rng.randint(1, 3)):
            target = rng.choice([v for v in (body, body.get("metadata"), body.get("data")) if isinstance(v, dict)])
            target[rng.choice(["apiVersion", "kind", "metadata", "data", "name", "labels", "k", "namespace", "x"])] = copy.deepcopy(rng.choice(pieces))
        raw = json.dumps(body).encode()
        if rng.random() < 0.2:
            cut = rng.randint(0, len(raw))
            raw = raw[:cut] + bytes([rng.randint(0, 255)]) + raw[cut:]
        status, reply = cluster.raw("POST", "/api/v1/namespaces/default/configmaps", raw)
        assert status < 500, (body, reply)
        if status >= 400:
            assert reply["kind"] == "Status" and reply["code"] == status
