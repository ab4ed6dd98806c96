"""RBAC enforced, end to end: real kubectl (`--as`, `auth can-i`, `auth can-i --list`)
and the official Python client against the shared control plane. The admin credential
is `system:admin` in `system:masters`; other users are reached by impersonation, which
the admin may do, as in Kubernetes."""

import json
import os
import urllib.error
import urllib.request

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from conftest import wait_for

READER = "reader"


@pytest.fixture
def reader(cluster, namespace):
    """A ServiceAccount bound to the `view` ClusterRole in `namespace`: its user name."""
    cluster.kubectl("create", "serviceaccount", READER, "-n", namespace)
    cluster.kubectl("create", "rolebinding", "reader-view", "--clusterrole=view", f"--serviceaccount={namespace}:{READER}", "-n", namespace)
    cluster.kubectl("create", "configmap", "settings", "--from-literal=k=v", "-n", namespace)
    return f"system:serviceaccount:{namespace}:{READER}"


def test_no_credentials_is_401(cluster):
    request = urllib.request.Request(cluster.url + "/api/v1/pods")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, context=cluster.ssl, timeout=10)
    assert e.value.code == 401
    assert json.loads(e.value.read())["reason"] == "Unauthorized"
    status, _ = cluster.raw("GET", "/api/v1/pods", token="not-the-token")
    assert status == 401


def test_a_service_account_bound_to_view_lists_but_cannot_delete(cluster, namespace, reader):
    listed = cluster.kubectl("get", "configmaps", "-n", namespace, f"--as={reader}", "-o", "name").stdout
    assert "configmap/settings" in listed
    denied = cluster.kubectl("delete", "configmap", "settings", "-n", namespace, f"--as={reader}", check=False)
    assert denied.returncode != 0
    assert (f'Error from server (Forbidden): configmaps "settings" is forbidden: User "{reader}" cannot delete resource '
            f'"configmaps" in API group "" in the namespace "{namespace}"') in denied.stderr, denied.stderr
    # view reads no Secret, and nothing outside its namespace.
    secrets = cluster.kubectl("get", "secrets", "-n", namespace, f"--as={reader}", check=False)
    assert "cannot list resource \"secrets\"" in secrets.stderr, secrets.stderr
    nodes = cluster.kubectl("get", "nodes", f"--as={reader}", check=False)
    assert f'User "{reader}" cannot list resource "nodes" in API group "" at the cluster scope' in nodes.stderr, nodes.stderr
    assert cluster.json("get", "configmap", "settings", "-n", namespace)["data"] == {"k": "v"}, "nothing was deleted"


def test_kubectl_auth_can_i_answers_right(cluster, namespace, reader):
    def can_i(*args):
        p = cluster.kubectl("auth", "can-i", *args, "-n", namespace, f"--as={reader}", check=False)
        return p.stdout.strip()
    assert can_i("list", "pods") == "yes"
    assert can_i("watch", "deployments.apps") == "yes"
    assert can_i("delete", "pods") == "no"
    assert can_i("get", "secrets") == "no"
    assert can_i("create", "selfsubjectaccessreviews.authorization.k8s.io") == "yes"
    assert cluster.kubectl("auth", "can-i", "delete", "nodes").stdout.strip() == "yes", "the admin may do anything"
    listing = cluster.kubectl("auth", "can-i", "--list", "-n", namespace, f"--as={reader}").stdout
    rows = {line.split()[0]: line for line in listing.splitlines()[1:] if line.strip()}
    assert "[get list watch]" in rows["pods"] and "[get list watch]" in rows["deployments.apps"], listing
    assert "secrets" not in rows and "selfsubjectaccessreviews.authorization.k8s.io" in rows, listing
    admin = cluster.kubectl("auth", "can-i", "--list").stdout
    assert any(line.split()[:1] == ["*.*"] for line in admin.splitlines()), admin


def test_a_role_with_resource_names_allows_only_those(cluster, namespace):
    user = "alice"
    cluster.kubectl("create", "role", "one-map", "--verb=get,update", "--resource=configmaps", "--resource-name=settings", "-n", namespace)
    cluster.kubectl("create", "rolebinding", "alice-one-map", "--role=one-map", f"--user={user}", "-n", namespace)
    cluster.kubectl("create", "configmap", "settings", "--from-literal=k=v", "-n", namespace)
    cluster.kubectl("create", "configmap", "other", "--from-literal=k=v", "-n", namespace)
    assert cluster.kubectl("get", "configmap", "settings", "-n", namespace, f"--as={user}").returncode == 0
    other = cluster.kubectl("get", "configmap", "other", "-n", namespace, f"--as={user}", check=False)
    assert 'configmaps "other" is forbidden: User "alice" cannot get resource "configmaps"' in other.stderr, other.stderr
    assert cluster.kubectl("auth", "can-i", "list", "configmaps", "-n", namespace, f"--as={user}", check=False).stdout.strip() == "no"


def test_the_python_client_gets_kubernetes_403(cluster, namespace, reader):
    api = cluster.api()
    api.set_default_header("Impersonate-User", reader)
    core = client.CoreV1Api(api)
    assert "settings" in [c.metadata.name for c in core.list_namespaced_config_map(namespace).items]
    with pytest.raises(ApiException) as e:
        core.delete_namespaced_config_map("settings", namespace)
    assert e.value.status == 403
    status = json.loads(e.value.body)
    assert status["reason"] == "Forbidden" and status["details"] == {"name": "settings", "group": "", "kind": "configmaps"}, status


def test_subject_access_reviews_answer_for_other_users(cluster, namespace, reader):
    review = lambda verb: {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                           "spec": {"user": reader, "groups": ["system:serviceaccounts", "system:authenticated"],
                                    "resourceAttributes": {"namespace": namespace, "verb": verb, "resource": "pods"}}}
    status, body = cluster.raw("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review("list"))
    assert status == 201 and body["status"]["allowed"] is True, body
    status, body = cluster.raw("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review("delete"))
    assert status == 201 and body["status"]["allowed"] is False, body
    status, body = cluster.raw("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", {"kind": "SubjectAccessReview", "spec": {"user": reader}})
    assert status == 422 and "exactly one of nonResourceAttributes or resourceAttributes" in body["message"], body
    # A ServiceAccount may not ask about others, nor impersonate anyone.
    status, body = cluster.raw("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review("list"), headers={"Impersonate-User": reader})
    assert status == 403 and "cannot create resource \"subjectaccessreviews\"" in body["message"], body
    resources = cluster.kubectl("api-resources", "--api-group=authorization.k8s.io", "-o", "name").stdout.split()
    assert "selfsubjectaccessreviews.authorization.k8s.io" in resources, resources


def test_the_default_roles_exist_and_aggregate(cluster):
    for role in ("cluster-admin", "admin", "edit", "view", "system:basic-user", "system:discovery"):
        assert cluster.json("get", "clusterrole", role)["metadata"]["labels"]["kubernetes.io/bootstrapping"] == "rbac-defaults"
    binding = cluster.json("get", "clusterrolebinding", "cluster-admin")
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:masters"}]
    # A ClusterRole labelled to aggregate into view extends what view grants.
    name = f"view-widgets-{os.urandom(3).hex()}"
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name, "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}]}))
    try:
        who = "bob"
        cluster.kubectl("create", "clusterrolebinding", f"{name}-bob", "--clusterrole=view", f"--user={who}")
        assert cluster.kubectl("auth", "can-i", "list", "secrets", "-A", f"--as={who}", check=False).stdout.strip() == "yes"
        assert cluster.kubectl("auth", "can-i", "admin-only", "secrets", "-A", f"--as={who}", check=False).stdout.strip() == "no"
    finally:
        cluster.kubectl("delete", "clusterrole", name)
        cluster.kubectl("delete", "clusterrolebinding", f"{name}-bob", check=False)


def test_service_account_tokens_authenticate_until_their_account_or_pod_goes(cluster, namespace, reader):
    token = cluster.kubectl("create", "token", READER, "-n", namespace).stdout.strip()
    as_reader = lambda *args: cluster.kubectl(*args, "-n", namespace, f"--token={token}", check=False)
    assert "configmap/settings" in as_reader("get", "configmaps", "-o", "name").stdout
    denied = as_reader("delete", "configmap", "settings")
    assert f'User "{reader}" cannot delete resource "configmaps"' in denied.stderr, denied.stderr
    # The official Python client, with nothing but the token and the CA.
    configuration = client.Configuration()
    configuration.host = cluster.url
    configuration.api_key = {"authorization": f"Bearer {token}"}
    configuration.ssl_ca_cert = os.path.join(cluster.data_dir, "ca.crt")
    core = client.CoreV1Api(client.ApiClient(configuration))
    assert "settings" in [c.metadata.name for c in core.list_namespaced_config_map(namespace).items]
    # A token bound to a pod ends with the pod.
    cluster.kubectl("run", "holder", "--image=registry.skiff.internal/http-hello:v1", "-n", namespace)
    bound = cluster.kubectl("create", "token", READER, "-n", namespace, "--bound-object-kind=Pod", "--bound-object-name=holder").stdout.strip()
    assert cluster.raw("GET", f"/api/v1/namespaces/{namespace}/configmaps", token=bound)[0] == 200
    cluster.kubectl("delete", "pod", "holder", "-n", namespace, "--grace-period=0", "--force", check=False)
    wait_for(lambda: cluster.raw("GET", f"/api/v1/namespaces/{namespace}/configmaps", token=bound)[0] == 401, 30, "the bound token to stop working")
    # Expiry below ten minutes is refused; an unknown account is 404.
    short = cluster.kubectl("create", "token", READER, "-n", namespace, "--duration=1m", check=False)
    assert "may not specify a duration less than 10 minutes" in short.stderr, short.stderr
    assert "not found" in cluster.kubectl("create", "token", "nobody", "-n", namespace, check=False).stderr
    # The issuer's documents name the key the token was signed with.
    status, config = cluster.raw("GET", "/.well-known/openid-configuration", token=token)
    assert status == 200 and config["issuer"] == "https://kubernetes.default.svc.cluster.local", config
    import base64
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    status, jwks = cluster.raw("GET", "/openid/v1/jwks", token=token)
    assert status == 200 and [k["kid"] for k in jwks["keys"]] == [header["kid"]] and header["alg"] == "ES256", (jwks, header)
    # Deleting the account revokes its tokens.
    cluster.kubectl("delete", "serviceaccount", READER, "-n", namespace)
    assert cluster.raw("GET", f"/api/v1/namespaces/{namespace}/configmaps", token=token)[0] == 401


def test_whoami_and_token_reviews(cluster, namespace, reader):
    assert "system:admin" in cluster.kubectl("auth", "whoami").stdout
    mine = cluster.kubectl("auth", "whoami", f"--as={reader}", "-o", "json").stdout
    assert json.loads(mine)["status"]["userInfo"]["username"] == reader
    token = cluster.kubectl("create", "token", READER, "-n", namespace, "--audience=widgets").stdout.strip()
    review = lambda audiences: cluster.raw("POST", "/apis/authentication.k8s.io/v1/tokenreviews",
                                           {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "spec": {"token": token, "audiences": audiences}})
    status, body = review(["widgets"])
    assert status == 201 and body["status"]["authenticated"] is True and body["status"]["user"]["username"] == reader, body
    assert f"system:serviceaccounts:{namespace}" in body["status"]["user"]["groups"]
    status, body = review([])
    assert status == 201 and body["status"]["authenticated"] is False, "a token for widgets is not one for the API"
    assert cluster.raw("GET", f"/api/v1/namespaces/{namespace}/configmaps", token=token)[0] == 401


def as_node(name):
    return [f"--as=system:node:{name}", "--as-group=system:nodes"]


def test_a_node_reads_only_the_secrets_of_its_own_pods(cluster, namespace, nodes):
    """The Node authorizer: a node's agent reads a Secret a pod bound to it names, by name,
    and nothing else of the kind; it changes only its own Node."""
    cluster.kubectl("create", "secret", "generic", "used", "--from-literal=k=v", "-n", namespace)
    cluster.kubectl("create", "secret", "generic", "unused", "--from-literal=k=v", "-n", namespace)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "consumer", "namespace": namespace},
           "spec": {"nodeName": nodes[0], "containers": [{"name": "app", "image": "registry.skiff.internal/none:v1",
                    "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "used", "key": "k"}}}]}]}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    mine = cluster.kubectl("get", "secret", "used", "-n", namespace, "-o", "name", *as_node(nodes[0]))
    assert mine.stdout.strip() == "secret/used"
    other = cluster.kubectl("get", "secret", "used", "-n", namespace, *as_node(nodes[1]), check=False)
    assert other.returncode != 0
    assert (f'secrets "used" is forbidden: User "system:node:{nodes[1]}" cannot get resource "secrets" in API group "" '
            f"in the namespace \"{namespace}\": no relationship found between node '{nodes[1]}' and this object") in other.stderr, other.stderr
    unused = cluster.kubectl("get", "secret", "unused", "-n", namespace, *as_node(nodes[0]), check=False)
    assert "no relationship found" in unused.stderr, unused.stderr
    every = cluster.kubectl("get", "secrets", "-n", namespace, *as_node(nodes[0]), check=False)
    assert "Forbidden" in every.stderr and "only by name" in every.stderr, every.stderr
    # One Secret watched by name, as the agent watches it.
    status, _ = cluster.raw("GET", f"/api/v1/namespaces/{namespace}/secrets?fieldSelector=metadata.name%3Dused",
                            headers={"Impersonate-User": f"system:node:{nodes[0]}", "Impersonate-Group": "system:nodes"})
    assert status == 200
    # Its own Node only.
    assert cluster.kubectl("label", "node", nodes[1], "touched=yes", *as_node(nodes[0]), check=False).returncode != 0
    assert cluster.kubectl("label", "node", nodes[0], "touched=yes", *as_node(nodes[0])).returncode == 0
    impostor = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "someone-else"}}
    created = cluster.kubectl("create", "-f", "-", *as_node(nodes[0]), input=json.dumps(impostor), check=False)
    assert f'node "{nodes[0]}" is not allowed to create a Node named "someone-else"' in created.stderr, created.stderr
    # Tokens only for its own pods' accounts, bound to the pod.
    bound = ["--bound-object-kind", "Pod", "--bound-object-name", "consumer"]
    assert cluster.kubectl("create", "token", "default", "-n", namespace, *bound, *as_node(nodes[0])).stdout.count(".") == 2
    stolen = cluster.kubectl("create", "token", "default", "-n", namespace, *bound, *as_node(nodes[1]), check=False)
    assert f"node '{nodes[1]}' may only request tokens for the service accounts of pods bound to it" in stolen.stderr, stolen.stderr
    unbound = cluster.kubectl("create", "token", "default", "-n", namespace, *as_node(nodes[0]), check=False)
    assert "a node may only request tokens bound to a pod" in unbound.stderr, unbound.stderr
    # Once the pod is gone, so is the node's right to its Secret.
    cluster.kubectl("delete", "pod", "consumer", "-n", namespace, "--grace-period=0", "--force", "--wait=true")
    after = cluster.kubectl("get", "secret", "used", "-n", namespace, *as_node(nodes[0]), check=False)
    assert "no relationship found" in after.stderr, after.stderr


def test_the_control_planes_parts_have_their_own_rights(cluster):
    def can(user, *args):
        return cluster.kubectl("auth", "can-i", *args, f"--as={user}", check=False).stdout.strip()
    assert can("system:kube-scheduler", "create", "pods", "--subresource=binding", "-n", "default") == "yes"
    assert can("system:kube-scheduler", "get", "secrets", "-n", "default") == "no"
    assert can("system:kube-scheduler", "delete", "nodes") == "no"
    assert can("system:kube-controller-manager", "create", "replicasets.apps", "-n", "default") == "yes"
    assert can("system:kube-controller-manager", "create", "clusterrolebindings") == "no"
    assert can("system:kube-proxy", "list", "endpointslices.discovery.k8s.io", "-A") == "yes"
    assert can("system:kube-proxy", "delete", "pods", "-n", "default") == "no"
