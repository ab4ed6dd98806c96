"""The real kubectl 1.32 against `skiff up`."""

import json
import textwrap

DEPLOYMENT = textwrap.dedent("""\
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: web
      labels: {app: web}
    spec:
      replicas: 2
      selector: {matchLabels: {app: web}}
      template:
        metadata: {labels: {app: web}}
        spec:
          containers:
          - name: web
            image: registry.local/web:1.0
            ports: [{containerPort: 8080}]
            env: [{name: MODE, value: blue}]
    ---
    apiVersion: v1
    kind: ConfigMap
    metadata: {name: settings}
    data: {level: info}
    """)


def test_version_and_discovery(cluster):
    v = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert v["serverVersion"]["gitVersion"].startswith("v1.")
    resources = cluster.kubectl("api-resources", "--no-headers").stdout
    for expected in ["pods", "deployments", "horizontalpodautoscalers", "leases", "runtimeclasses", "clusterrolebindings"]:
        assert expected in resources
    assert "po " in cluster.kubectl("api-resources", "--api-group=").stdout


def test_aggregated_discovery(cluster, tmp_path):
    # kubectl asks /api and /apis for apidiscovery.k8s.io/v2 first; answered, it needs no
    # request per group version.
    p = cluster.kubectl("--cache-dir", str(tmp_path), "api-resources", "-v=6")
    fetched = [line.split("GET ")[1].split("?")[0] for line in p.stderr.splitlines() if "GET https" in line]
    assert [f.split(str(cluster.port))[1] for f in fetched] == ["/api", "/apis"], fetched
    assert "horizontalpodautoscalers" in p.stdout and "deployments" in p.stdout
    accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
    status, doc = cluster.raw("GET", "/apis", headers={"Accept": accept})
    assert status == 200 and doc["kind"] == "APIGroupDiscoveryList" and doc["apiVersion"] == "apidiscovery.k8s.io/v2"
    apps = next(g for g in doc["items"] if g["metadata"]["name"] == "apps")
    deployments = next(r for r in apps["versions"][0]["resources"] if r["resource"] == "deployments")
    assert deployments["responseKind"] == {"group": "apps", "version": "v1", "kind": "Deployment"}
    assert {"subresource": "scale", "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"},
            "verbs": ["get", "patch", "update"]} in deployments["subresources"]
    status, plain = cluster.raw("GET", "/apis", headers={"Accept": "application/json"})
    assert plain["kind"] == "APIGroupList"


def test_bootstrap_objects_and_tables(cluster):
    out = cluster.kubectl("get", "namespaces").stdout
    header = out.splitlines()[0].split()
    assert header == ["NAME", "STATUS", "AGE"]
    for ns in ["default", "kube-system", "kube-public"]:
        assert f"\n{ns} " in "\n" + out
    svc = cluster.kubectl("get", "svc", "kubernetes", "-n", "default").stdout
    assert svc.splitlines()[0].split()[:4] == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP"]
    assert "10.43.0.1" in svc


def test_apply_is_idempotent_and_updates(cluster, namespace):
    first = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=DEPLOYMENT).stdout
    assert "deployment.apps/web created" in first and "configmap/settings created" in first
    # The ConfigMap's revision: no controller writes it (the Deployment's status moves on).
    rv = cluster.kubectl("get", "cm", "settings", "-n", namespace, "-o", "jsonpath={.metadata.resourceVersion}").stdout
    again = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=DEPLOYMENT).stdout
    assert "deployment.apps/web unchanged" in again and "configmap/settings unchanged" in again
    assert cluster.kubectl("get", "cm", "settings", "-n", namespace, "-o", "jsonpath={.metadata.resourceVersion}").stdout == rv
    changed = DEPLOYMENT.replace("replicas: 2", "replicas: 3").replace("web:1.0", "web:2.0")
    out = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=changed).stdout
    assert "deployment.apps/web configured" in out
    d = json.loads(cluster.kubectl("get", "deploy", "web", "-n", namespace, "-o", "json").stdout)
    assert d["spec"]["replicas"] == 3
    assert d["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/web:2.0"
    assert d["metadata"]["generation"] == 2
    # Defaults Kubernetes applies are there.
    assert d["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": "25%", "maxUnavailable": "25%"}
    assert d["spec"]["revisionHistoryLimit"] == 10


def test_scale_patch_and_delete(cluster, namespace):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=DEPLOYMENT)
    assert "scaled" in cluster.kubectl("scale", "deploy/web", "-n", namespace, "--replicas=5").stdout
    assert cluster.kubectl("get", "deploy", "web", "-n", namespace, "-o", "jsonpath={.spec.replicas}").stdout == "5"
    patch = '{"spec":{"template":{"spec":{"containers":[{"name":"web","env":[{"name":"EXTRA","value":"1"}]}]}}}}'
    cluster.kubectl("patch", "deploy", "web", "-n", namespace, "-p", patch)
    env = json.loads(cluster.kubectl("get", "deploy", "web", "-n", namespace, "-o", "jsonpath={.spec.template.spec.containers[0].env}").stdout)
    assert {"name": "MODE", "value": "blue"} in env and {"name": "EXTRA", "value": "1"} in env
    cluster.kubectl("patch", "cm", "settings", "-n", namespace, "--type=merge", "-p", '{"data":{"level":"debug"}}')
    cluster.kubectl("patch", "cm", "settings", "-n", namespace, "--type=json", "-p", '[{"op":"add","path":"/data/x","value":"y"}]')
    data = json.loads(cluster.kubectl("get", "cm", "settings", "-n", namespace, "-o", "jsonpath={.data}").stdout)
    assert data == {"level": "debug", "x": "y"}
    assert 'deleted' in cluster.kubectl("delete", "cm", "settings", "-n", namespace).stdout
    missing = cluster.kubectl("get", "cm", "settings", "-n", namespace, check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr


def test_pods_table_and_selectors(cluster, namespace):
    pods = "\n---\n".join(
        f"apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, labels: {{tier: {tier}, idx: '{i}'}}}}\n"
        # A node selector no node matches keeps them Pending whatever nodes exist.
        f"spec: {{nodeSelector: {{pool: none}}, containers: [{{name: c, image: busybox:1.36}}]}}"
        for i, tier in enumerate(["front", "front", "back", "db"]))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=pods)
    out = cluster.kubectl("get", "pods", "-n", namespace).stdout.splitlines()
    assert out[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert out[1].split()[:4] == ["p0", "0/1", "Pending", "0"]
    wide = cluster.kubectl("get", "pods", "-n", namespace, "-o", "wide").stdout.splitlines()[0]
    assert "NODE" in wide and "IP" in wide

    def names(selector):
        out = cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "name").stdout
        return sorted(line.split("/")[1] for line in out.split())

    assert names("tier=front") == ["p0", "p1"]
    assert names("tier!=front") == ["p2", "p3"]
    assert names("tier in (back,db)") == ["p2", "p3"]
    assert names("tier notin (back,db)") == ["p0", "p1"]
    assert names("idx") == ["p0", "p1", "p2", "p3"]
    assert names("!idx") == []
    # An unbound pod has nothing to stop: kubectl delete returns once it is gone.
    assert 'pod "p0" deleted' in cluster.kubectl("delete", "pod", "p0", "-n", namespace).stdout


def test_skiff_cli(cluster, namespace):
    assert "created" in cluster.skiff("create", "namespace", namespace + "-cli").stdout
    manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c1, labels: {a: b}}\ndata: {k: v}\n"
    assert "configmap/c1 created" in cluster.skiff("apply", "-n", namespace, "-f", "-", input=manifest).stdout
    assert "configmap/c1 unchanged" in cluster.skiff("apply", "-n", namespace, "-f", "-", input=manifest).stdout
    table = cluster.skiff("get", "cm", "-n", namespace, "-l", "a=b").stdout.splitlines()
    assert table[0].split() == ["NAME", "DATA", "AGE"] and table[1].split()[:2] == ["c1", "1"]
    assert "k: v" in cluster.skiff("get", "configmap", "c1", "-n", namespace, "-o", "yaml").stdout
    assert "NAMESPACE" in cluster.skiff("get", "cm", "-A").stdout
    assert "Name:        c1" in cluster.skiff("describe", "cm", "c1", "-n", namespace).stdout
    assert 'configmap "c1" deleted' in cluster.skiff("delete", "cm", "c1", "-n", namespace).stdout
    bad = cluster.skiff("get", "widgets", check=False)
    assert bad.returncode != 0 and "widgets" in bad.stderr


def test_readme_example_applies(cluster, namespace):
    import os
    example = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "hello.yaml")
    out = cluster.kubectl("apply", "-n", namespace, "-f", example).stdout
    assert "deployment.apps/hello created" in out and "service/hello created" in out
    svc = json.loads(cluster.kubectl("get", "svc", "hello", "-n", namespace, "-o", "json").stdout)
    assert svc["spec"]["clusterIP"].startswith("10.43.") and svc["spec"]["ports"][0]["targetPort"] == 8080
    watch = cluster.kubectl("get", "cm", "-n", namespace, "--watch", "--request-timeout=2s", check=False)
    assert "hello-config" in watch.stdout
    cluster.kubectl("delete", "-n", namespace, "-f", example)


def test_explain_reads_openapi_v3(cluster):
    out = cluster.kubectl("explain", "deployment.spec.strategy").stdout
    assert "KIND:       Deployment" in out and "rollingUpdate" in out
    out = cluster.kubectl("explain", "pods.spec.containers.ports").stdout
    assert "containerPort" in out and "<[]ContainerPort>" in out
    assert "clusterIP" in cluster.kubectl("explain", "svc.spec", "--recursive").stdout


def test_apply_of_a_list_is_validated_against_the_protobuf_openapi(cluster, namespace):
    # kubectl validates a `kind: List` against /openapi/v2 fetched as gnostic protobuf.
    items = """\
        apiVersion: v1
        kind: List
        items:
        - apiVersion: v1
          kind: ConfigMap
          metadata: {name: listed}
          data: {a: "1"}
        """
    out = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=textwrap.dedent(items)).stdout
    assert "configmap/listed created" in out
    # Validation is real: an unknown field is reported from the schema.
    bad = textwrap.dedent(items).replace('data: {a: "1"}', 'data: {a: "1"}\n  bogus: 1').replace("name: listed", "name: bad")
    p = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=bad, check=False)
    assert p.returncode != 0 and "bogus" in p.stderr, p.stderr
