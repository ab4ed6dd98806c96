"""A restart of the control plane (`skiff server`) on the same data directory keeps every object."""

import tempfile

from kubernetes import client

from conftest import Cluster, wait_for


def test_restart_keeps_everything():
    with tempfile.TemporaryDirectory() as d:
        c = Cluster(d, command="server").start()
        core = client.CoreV1Api(c.api())
        core.create_namespace({"metadata": {"name": "keep"}})
        for i in range(20):
            core.create_namespaced_config_map("keep", {"metadata": {"name": f"c{i}"}, "data": {"i": str(i)}})
        before = core.list_namespaced_config_map("keep")
        c.stop()
        port = c.port
        c = Cluster(d, command="server")
        c.port = port  # on the same address, so the `kubernetes` Endpoints stay as they are
        c.start()
        core = client.CoreV1Api(c.api())
        after = core.list_namespaced_config_map("keep")
        assert [(i.metadata.name, i.metadata.resource_version, i.data) for i in after.items] == \
            [(i.metadata.name, i.metadata.resource_version, i.data) for i in before.items]
        assert after.metadata.resource_version == before.metadata.resource_version
        # The bootstrap does not duplicate or bump anything on a second start.
        assert core.read_namespaced_service("kubernetes", "default").spec.cluster_ip == "10.43.0.1"
        c.stop()
        # On another port, the `kubernetes` Endpoints follow the API server there.
        c = Cluster(d, command="server").start()
        core = client.CoreV1Api(c.api())
        wait_for(lambda: core.read_namespaced_endpoints("kubernetes", "default").subsets[0].ports[0].port == c.port, 10, "the kubernetes Endpoints to follow")
        c.stop()
