"""Helm 3 against Skiff, beyond the README's tour (which installs, upgrades, rolls back
and uninstalls examples/charts/hello-function): the chart lints, releases are kept as
Helm keeps them, and a chart's invalid object is refused with the server's own message."""

import os
import subprocess

from conftest import ROOT

CHART = os.path.join(ROOT, "examples/charts/hello-function")


def helm(cluster, *args):
    env = dict(os.environ, KUBECONFIG=cluster.kubeconfig)
    return subprocess.run(["helm", *args], capture_output=True, text=True, env=env, timeout=180)


def test_the_example_chart_lints():
    p = subprocess.run(["helm", "lint", CHART], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "1 chart(s) linted, 0 chart(s) failed" in p.stdout, p.stdout + p.stderr


def test_releases_are_secrets_and_invalid_objects_get_the_servers_error(cluster, namespace):
    installed = helm(cluster, "install", "kept", CHART, "-n", namespace, "--set", "replicas=1")
    assert installed.returncode == 0, installed.stderr
    secrets = cluster.json("get", "secrets", "-n", namespace, "-l", "owner=helm,name=kept")["items"]
    assert [s["type"] for s in secrets] == ["helm.sh/release.v1"], secrets
    bad = helm(cluster, "install", "bad", CHART, "-n", namespace, "--set", "replicas=-1")
    assert bad.returncode != 0
    assert 'Deployment.apps "bad" is invalid: spec.replicas: Invalid value: -1: must be greater than or equal to 0' in bad.stderr, bad.stderr
    bad_port = helm(cluster, "install", "bad-port", CHART, "-n", namespace, "--set", "port=70000")
    assert 'Service "bad-port" is invalid: spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive' in bad_port.stderr, bad_port.stderr
    listed = helm(cluster, "list", "-a", "-n", namespace, "-q")
    assert sorted(listed.stdout.split()) == ["bad", "bad-port", "kept"]
    assert helm(cluster, "uninstall", "kept", "bad", "bad-port", "-n", namespace).returncode == 0
    assert cluster.json("get", "secrets", "-n", namespace, "-l", "owner=helm")["items"] == []


SKIFF_CHART = os.path.join(ROOT, "charts/skiff")


def test_the_skiff_chart_lints_and_renders_what_skiff_itself_takes(cluster, namespace):
    for mode in ([], ["--set", "controlPlane.enabled=true", "--set", "agent.enabled=false"]):
        lint = subprocess.run(["helm", "lint", SKIFF_CHART, *mode], capture_output=True, text=True, timeout=60)
        assert lint.returncode == 0, lint.stdout + lint.stderr
        rendered = subprocess.run(["helm", "template", "skiff", SKIFF_CHART, "-n", namespace, *mode], capture_output=True, text=True, timeout=60, check=True).stdout
        kinds = sorted(line.split(": ", 1)[1] for line in rendered.splitlines() if line.startswith("kind: "))
        expected = ["ClusterRoleBinding", "DaemonSet", "RuntimeClass", "ServiceAccount"] if not mode else ["RuntimeClass", "Service", "StatefulSet"]
        assert kinds == expected, kinds
        # What it renders, Skiff itself takes as it is (validated by the server, stored nowhere).
        applied = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=rendered, check=False)
        assert applied.returncode == 0, applied.stderr
        assert "created (server dry run)" in applied.stdout, applied.stdout
