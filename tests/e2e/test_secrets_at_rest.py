"""Secrets encrypted at rest, end to end: a real `skiff server` on its own data directory,
real kubectl, and `skiff secrets rotate-key` between two runs."""

import base64
import os
import subprocess
import tempfile

from conftest import Cluster, skiff_binary

VALUE = "correct-horse-battery-staple"


def found_in(directory, needle):
    """Whether any file under `directory` holds `needle` (grep -r, binary files too)."""
    return subprocess.run(["grep", "-r", "-a", "-l", "-F", needle, directory], capture_output=True).returncode == 0


def test_secrets_are_not_in_the_data_dir_in_plain_text_and_survive_a_key_rotation():
    with tempfile.TemporaryDirectory() as d:
        c = Cluster(d, command="server").start()
        try:
            c.kubectl("create", "secret", "generic", "db", f"--from-literal=password={VALUE}")
            # kubectl apply keeps the whole object in an annotation: that is sealed too.
            c.kubectl("apply", "-f", "-", input=f"apiVersion: v1\nkind: Secret\nmetadata: {{name: applied}}\nstringData: {{token: {VALUE}-applied}}\n")
            c.kubectl("create", "configmap", "plain", "--from-literal=note=plain-configmap-value")
            assert c.json("get", "secret", "db")["data"]["password"] == base64.b64encode(VALUE.encode()).decode()
            assert c.kubectl("get", "secrets", "--field-selector=type=Opaque", "-o", "name").stdout.split() == ["secret/applied", "secret/db"]
        finally:
            c.stop()
        for needle in (VALUE, base64.b64encode(VALUE.encode()).decode()):
            assert not found_in(d, needle), f"{needle} is in the data directory in plain text"
        assert found_in(d, "plain-configmap-value"), "ConfigMaps are not encrypted (and grep works)"
        keys_before = open(os.path.join(d, "encryption.keys")).read()
        rotated = subprocess.run([skiff_binary(), "secrets", "rotate-key", "--data-dir", d], capture_output=True, text=True, timeout=60)
        assert rotated.returncode == 0 and "encrypted with key k2: 2 re-encrypted" in rotated.stdout, rotated
        keys_after = open(os.path.join(d, "encryption.keys")).read().splitlines()
        assert keys_after[0].startswith("k2:") and keys_after[1:] == keys_before.splitlines()
        c = Cluster(d, command="server").start()
        try:
            assert c.json("get", "secret", "db")["data"]["password"] == base64.b64encode(VALUE.encode()).decode()
            assert base64.b64decode(c.json("get", "secret", "applied")["data"]["token"]).decode() == f"{VALUE}-applied"
            # The store is the running server's: a rotation now is refused, and changes nothing.
            busy = subprocess.run([skiff_binary(), "secrets", "rotate-key", "--data-dir", d], capture_output=True, text=True, timeout=60)
            assert busy.returncode != 0 and "is another skiff running on it?" in busy.stderr, busy
            assert open(os.path.join(d, "encryption.keys")).read().splitlines() == keys_after
        finally:
            c.stop()
