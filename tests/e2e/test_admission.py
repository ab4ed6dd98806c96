"""Admission with real kubectl and the Python client.

PodSecurity: every namespace is held to the baseline Pod Security Standard unless its
`pod-security.kubernetes.io/<mode>` labels say otherwise; `enforce` refuses, `warn` prints
kubectl's warnings (for workloads' templates too), `audit` notes violations in the audit
log. LimitRanger: a namespace's LimitRanges fill in and bound its pods' resources.
ResourceQuota: a namespace's quotas refuse what would go over them."""

import json
import os
import threading

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from conftest import wait_for


def pod(name, spec_extra=None, container_extra=None):
    container = {"name": "app", "image": "registry.skiff.internal/http-hello:v1", **(container_extra or {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"containers": [container], **(spec_extra or {})}}


HARDENED = {"securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
                                "seccompProfile": {"type": "RuntimeDefault"}}}


def apply(cluster, namespace, manifest, check=True):
    return cluster.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(manifest), check=check)


def label(cluster, namespace, *labels):
    cluster.kubectl("label", "--overwrite", "namespace", namespace, *labels)


def test_baseline_is_enforced_by_default(cluster, namespace):
    p = apply(cluster, namespace, pod("host", {"hostNetwork": True}), check=False)
    assert p.returncode != 0
    assert 'pods "host" is forbidden: violates PodSecurity "baseline:latest": host namespaces (hostNetwork=true)' in p.stderr, p.stderr
    p = apply(cluster, namespace, pod("root", container_extra={"securityContext": {"privileged": True, "capabilities": {"add": ["NET_ADMIN"]}}}), check=False)
    assert 'privileged (container "app" must not set securityContext.privileged=true)' in p.stderr, p.stderr
    assert 'non-default capabilities (container "app" must not include "NET_ADMIN" in securityContext.capabilities.add)' in p.stderr, p.stderr
    # An ordinary pod passes without a word.
    p = apply(cluster, namespace, pod("plain"))
    assert "Warning" not in p.stderr, p.stderr
    # The same refusal through the Python client is a 403 Status.
    with pytest.raises(ApiException) as refused:
        client.CoreV1Api(cluster.api()).create_namespaced_pod(namespace, pod("host2", {"hostPID": True}))
    assert refused.value.status == 403
    assert json.loads(refused.value.body)["reason"] == "Forbidden"


def test_workload_templates_are_warned_of_not_refused(cluster, namespace):
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "mounts"},
                  "spec": {"selector": {"matchLabels": {"app": "m"}}, "template": {"metadata": {"labels": {"app": "m"}},
                           "spec": {"containers": [{"name": "app", "image": "x"}], "volumes": [{"name": "h", "hostPath": {"path": "/etc"}}]}}}}
    p = apply(cluster, namespace, deployment)
    assert 'Warning: would violate PodSecurity "baseline:latest": hostPath volumes (volume "h")' in p.stderr, p.stderr
    assert cluster.json("-n", namespace, "get", "deployment", "mounts")["metadata"]["name"] == "mounts"
    # A change that leaves the template alone is not judged again.
    for change in (["label", "deployment", "mounts", "tier=web"], ["scale", "deployment", "mounts", "--replicas=2"]):
        p = cluster.kubectl("-n", namespace, *change)
        assert "Warning" not in p.stderr, (change, p.stderr)


def test_namespace_labels_choose_each_mode(cluster, namespace):
    label(cluster, namespace, "pod-security.kubernetes.io/enforce=restricted")
    p = apply(cluster, namespace, pod("plain"), check=False)
    assert p.returncode != 0
    assert 'violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false (container "app" must set securityContext.allowPrivilegeEscalation=false)' in p.stderr, p.stderr
    assert 'runAsNonRoot != true (pod or container "app" must set securityContext.runAsNonRoot=true)' in p.stderr, p.stderr
    apply(cluster, namespace, pod("hardened", container_extra=HARDENED))
    # Privileged enforced, restricted warned of: created, with kubectl's warning.
    label(cluster, namespace, "pod-security.kubernetes.io/enforce=privileged", "pod-security.kubernetes.io/warn=restricted",
          "pod-security.kubernetes.io/warn-version=v1.32")
    p = apply(cluster, namespace, pod("host", {"hostNetwork": True}))
    assert 'Warning: would violate PodSecurity "restricted:v1.32": host namespaces (hostNetwork=true)' in p.stderr, p.stderr


def test_bad_labels_are_refused(cluster, namespace):
    p = cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=strict", check=False)
    assert p.returncode != 0
    assert "pod-security.kubernetes.io/enforce" in p.stderr and "must be one of privileged, baseline, restricted" in p.stderr, p.stderr


def test_audit_mode_notes_violations_in_the_audit_log(cluster, namespace):
    apply(cluster, namespace, pod("audited"))

    def annotated():
        with open(os.path.join(cluster.data_dir, "audit.log")) as f:
            for line in f.read().split("\n")[:-1]:
                e = json.loads(line)
                ref = e.get("objectRef", {})
                if e["verb"] == "create" and ref.get("namespace") == namespace and ref.get("name") == "audited":
                    return e["annotations"].get("pod-security.kubernetes.io/audit-violations")
        return None

    note = wait_for(annotated, 10, "the pod's audit event")
    assert note.startswith('would violate PodSecurity "restricted:latest": allowPrivilegeEscalation != false'), note


LIMITS = {"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "limits"},
          "spec": {"limits": [{"type": "Container", "default": {"cpu": "500m", "memory": "128Mi"}, "defaultRequest": {"cpu": "100m"},
                               "max": {"cpu": "1"}, "min": {"memory": "16Mi"}}]}}


def test_limit_ranges_fill_in_and_bound_resources(cluster, namespace):
    apply(cluster, namespace, LIMITS)
    # Stored with Kubernetes' defaults: the default request of memory is its default limit.
    stored = cluster.json("-n", namespace, "get", "limitrange", "limits")["spec"]["limits"][0]
    assert stored["defaultRequest"] == {"cpu": "100m", "memory": "128Mi"}, stored
    apply(cluster, namespace, pod("defaulted"))
    created = cluster.json("-n", namespace, "get", "pod", "defaulted")
    assert created["spec"]["containers"][0]["resources"] == {"limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}}
    assert created["metadata"]["annotations"]["kubernetes.io/limit-ranger"] == \
        "LimitRanger plugin set: cpu, memory request for container app; cpu, memory limit for container app"
    # A limit alone asks for what it limits (no default request over it).
    apply(cluster, namespace, pod("limited", container_extra={"resources": {"limits": {"cpu": "800m"}}}))
    limited = cluster.json("-n", namespace, "get", "pod", "limited")["spec"]["containers"][0]["resources"]
    assert limited["requests"]["cpu"] == "800m" and limited["limits"]["cpu"] == "800m", limited
    p = apply(cluster, namespace, pod("greedy", container_extra={"resources": {"limits": {"cpu": "2"}, "requests": {"memory": "8Mi"}}}), check=False)
    assert p.returncode != 0
    assert 'pods "greedy" is forbidden: [minimum memory usage per Container is 16Mi, but request is 8Mi, maximum cpu usage per Container is 1, but limit is 2]' in p.stderr, p.stderr


def quota(name, hard):
    return {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": name}, "spec": {"hard": hard}}


def used(cluster, namespace, name):
    return cluster.json("get", "resourcequota", name, "-n", namespace).get("status", {}).get("used", {})


def test_quota_refuses_a_pod_over_it_with_the_kubernetes_message(cluster, namespace):
    apply(cluster, namespace, quota("compute", {"pods": "3", "requests.cpu": "1", "limits.memory": "1Gi"}))
    bare = apply(cluster, namespace, pod("bare"), check=False)
    assert 'pods "bare" is forbidden: failed quota: compute: must specify limits.memory for: app; requests.cpu for: app' in bare.stderr, bare.stderr
    sized = {"resources": {"requests": {"cpu": "600m"}, "limits": {"memory": "256Mi"}}}
    apply(cluster, namespace, pod("first", container_extra=sized))
    over = apply(cluster, namespace, pod("second", container_extra=sized), check=False)
    assert over.returncode != 0
    assert ('Error from server (Forbidden): error when creating "STDIN": pods "second" is forbidden: exceeded quota: compute, '
            'requested: requests.cpu=600m, used: requests.cpu=600m, limited: requests.cpu=1') in over.stderr, over.stderr
    charged = {"pods": "1", "requests.cpu": "600m", "limits.memory": "256Mi"}
    wait_for(lambda: used(cluster, namespace, "compute") == charged, 30, "the quota's use to read the one pod")
    # A deleted pod frees its share: the quota controller recounts.
    cluster.kubectl("delete", "pod", "first", "-n", namespace, "--grace-period=0", "--force", "--wait=true")
    wait_for(lambda: used(cluster, namespace, "compute").get("pods") == "0", 60, "the quota to be recounted")
    apply(cluster, namespace, pod("second", container_extra=sized))


def test_a_quota_scoped_by_priority_class_counts_only_those_pods(cluster, namespace):
    scoped = quota("high-only", {"pods": "1"})
    scoped["spec"]["scopeSelector"] = {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}
    apply(cluster, namespace, scoped)
    high = {"priorityClassName": "high"}
    apply(cluster, namespace, pod("high-1", spec_extra=high))
    over = apply(cluster, namespace, pod("high-2", spec_extra=high), check=False)
    assert 'pods "high-2" is forbidden: exceeded quota: high-only, requested: pods=1, used: pods=1, limited: pods=1' in over.stderr, over.stderr
    apply(cluster, namespace, pod("unclassed"))
    wait_for(lambda: used(cluster, namespace, "high-only") == {"pods": "1"}, 30, "the scoped quota to count the one high pod")
    # A selector Kubernetes would refuse is refused, with its field.
    bad = quota("bad-scope", {"pods": "1"})
    bad["spec"]["scopeSelector"] = {"matchExpressions": [{"scopeName": "BestEffort", "operator": "In", "values": ["x"]}]}
    refused = apply(cluster, namespace, bad, check=False)
    assert "spec.scopeSelector.matchExpressions[0].operator: Invalid value: \"In\": must be 'Exist' when scope is any of" in refused.stderr, refused.stderr


def test_quota_counts_exactly_under_concurrent_creates(cluster, namespace, api):
    # The namespace holds kube-root-ca.crt once the root CA publisher has been by (it is
    # not there the moment the namespace is): then four more fit.
    core = client.CoreV1Api(api)
    wait_for(lambda: [c.metadata.name for c in core.list_namespaced_config_map(namespace).items] == ["kube-root-ca.crt"], 30, "kube-root-ca.crt")
    apply(cluster, namespace, quota("counts", {"count/configmaps": "5"}))
    wait_for(lambda: used(cluster, namespace, "counts") == {"count/configmaps": "1"}, 30, "the quota counted")
    results = []
    def create(i):
        try:
            core.create_namespaced_config_map(namespace, {"metadata": {"name": f"cm-{i}"}})
            results.append(201)
        except ApiException as e:
            results.append(e.status)
            assert "exceeded quota: counts" in e.body, e.body
    threads = [threading.Thread(target=create, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [201] * 4 + [403] * 8, results
    assert len(core.list_namespaced_config_map(namespace).items) == 5
    wait_for(lambda: used(cluster, namespace, "counts") == {"count/configmaps": "5"}, 30, "the quota's use to read five")
