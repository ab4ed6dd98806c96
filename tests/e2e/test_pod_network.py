"""Pod IPs routed between nodes: a `skiff up` node on the host and a second agent in a
network namespace of its own (another machine, as far as the network goes), joined by a
veth pair. Each node gets its share of the cluster's pod range, and each routes the
other's share to it, so a pod answers at its IP from the other node. Both pull their
image from the cluster's embedded registry by its fixed name."""

import os
import ipaddress
import subprocess
import tempfile

import pytest

from conftest import Cluster, skiff_binary, wait_for
from test_agent import create, http, pod, pod_manifest

HOST_IP, PEER_IP = "10.199.0.1", "10.199.0.2"


def sh(*args):
    subprocess.run(args, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def peer_netns():
    """A network namespace reached from the host over a veth pair, 10.199.0.1 ↔ .2."""
    tag = os.urandom(3).hex()
    ns, host_end, peer_end = f"skiff-peer-{tag}", f"skh{tag}", f"skp{tag}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", peer_end, "netns", ns)
        sh("ip", "addr", "add", f"{HOST_IP}/30", "dev", host_end)
        sh("ip", "link", "set", host_end, "up")
        for cmd in (["addr", "add", f"{PEER_IP}/30", "dev", peer_end], ["link", "set", peer_end, "up"], ["link", "set", "lo", "up"]):
            sh("ip", "netns", "exec", ns, "ip", *cmd)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture(scope="module")
def two_nodes(peer_netns):
    with tempfile.TemporaryDirectory() as d:
        # The example image in the cluster's own registry: node-b, on the other side of the
        # veth, reaches it by the same name through the API server's address it was given.
        image = "registry.skiff.internal/http-hello:v1"
        cluster = Cluster(d, ["--agent-port", "0", "--node-name", "node-a", "--node-ip", HOST_IP, "--cluster-cidr", "10.62.0.0/16"], listen="0.0.0.0").start()
        log = open(os.path.join(d, "agent-b.log"), "ab")
        agent = subprocess.Popen(["ip", "netns", "exec", peer_netns, skiff_binary(), "agent", "--server", f"https://{HOST_IP}:{cluster.port}",
                                  "--token", cluster.token, "--node-name", "node-b", "--node-ip", PEER_IP, "--agent-port", "0",
                                  "--data-dir", os.path.join(d, "agent-b")], stdout=log, stderr=log)
        try:
            for name in ("node-a", "node-b"):
                wait_for(lambda: network_condition(cluster, name), 30, f"{name} to set up its pod network")
            yield cluster, image
        finally:
            agent.terminate()
            agent.wait(timeout=10)
            cluster.stop()


def network_condition(cluster, node):
    got = cluster.kubectl("get", "node", node, "-o", "json", check=False)
    if got.returncode != 0:
        return None
    import json
    conditions = json.loads(got.stdout)["status"].get("conditions", [])
    return next((c for c in conditions if c["type"] == "NetworkUnavailable"), None)


def test_pods_on_two_nodes_reach_each_other_by_pod_ip(two_nodes, peer_netns):
    cluster, image = two_nodes
    cidrs = {}
    for name in ("node-a", "node-b"):
        condition = network_condition(cluster, name)
        assert (condition["status"], condition["reason"]) == ("False", "SkiffBridgeReady"), condition
        cidrs[name] = ipaddress.ip_network(cluster.json("get", "node", name)["spec"]["podCIDR"])
    assert cidrs["node-a"] != cidrs["node-b"] and all(c.subnet_of(ipaddress.ip_network("10.62.0.0/16")) for c in cidrs.values()), cidrs
    for name in ("node-a", "node-b"):
        create(cluster, "default", pod_manifest(f"fn-{name}", image, [], restart="Always", nodeName=name, container={
            "ports": [{"containerPort": 8080}], "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}))
    ips = {}
    for name in ("node-a", "node-b"):
        wait_for(lambda: (pod(cluster, "default", f"fn-{name}")["status"].get("containerStatuses") or [{}])[0].get("ready"), 60, f"fn-{name} to serve")
        ips[name] = pod(cluster, "default", f"fn-{name}")["status"]["podIP"]
        assert ipaddress.ip_address(ips[name]) in cidrs[name], (ips, cidrs)
    # The host reaches node-b's pod through the route node-a's agent set up …
    assert http(f"http://{ips['node-b']}:8080/") == (200, "Hello from fn-node-b!\n")
    # … and node-b reaches node-a's pod through its own.
    fetch = f"import urllib.request; print(urllib.request.urlopen('http://{ips['node-a']}:8080/', timeout=10).read().decode(), end='')"
    out = subprocess.run(["ip", "netns", "exec", peer_netns, "python3", "-c", fetch], capture_output=True, text=True, timeout=30)
    assert out.stdout == "Hello from fn-node-a!\n", out.stderr
