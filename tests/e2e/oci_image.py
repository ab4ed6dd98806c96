"""Container images the tests build themselves (nothing can be pulled from a public
registry here): layers assembled with `tarfile` around Debian's static busybox, pushed to a
registry with plain HTTP as the distribution API describes."""

import gzip
import hashlib
import io
import json
import platform
import tarfile
import urllib.request

BUSYBOX = "/usr/bin/busybox"
APPLETS = ["sh", "cat", "echo", "sleep", "httpd", "wget", "ls", "env", "hostname", "id", "true", "false", "tar", "dd", "mkdir", "nslookup", "head", "ps", "kill"]


def arch():
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def layer(files, compress=True):
    """A layer from {path: bytes | ("symlink", target) | ("dir",) | ("raw", TarInfo-like)}."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, content in files.items():
            info = tarfile.TarInfo(path)
            info.mtime = 0
            if isinstance(content, tuple) and content[0] == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, content[1]
                tar.addfile(info)
            elif isinstance(content, tuple) and content[0] == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o755 if path.startswith("bin/") else 0o644
                tar.addfile(info, io.BytesIO(content))
    data = buf.getvalue()
    return (gzip.compress(data, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip") if compress else (data, "application/vnd.oci.image.layer.v1.tar")


def busybox_layers(page=b"hello from a container\n"):
    """A userland (busybox and its applets, /etc/passwd with an unprivileged user), then
    a web root; the second layer also deletes a file of the first (a whiteout)."""
    base = {"bin/busybox": open(BUSYBOX, "rb").read(), "tmp/": ("dir",), "etc/old.txt": b"old\n",
            "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
            "etc/group": b"root:x:0:\nnobody:x:65534:\n"}
    base.update({f"bin/{a}": ("symlink", "busybox") for a in APPLETS})
    web = {"www/index.html": page, "etc/.wh.old.txt": b""}
    return [layer(base), layer(web)]


def config(cmd, architecture=None, user=None, env=("PATH=/bin",)):
    c = {"architecture": architecture or arch(), "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
         "config": {"Cmd": cmd, "Env": list(env)}}
    if user:
        c["config"]["User"] = user
    return json.dumps(c).encode()


def push(registry_host, repo, tag, config_bytes, layers):
    """Pushes blobs and the manifest; returns the image reference."""
    def blob(data, media_type):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        req = urllib.request.Request(f"http://{registry_host}/v2/{repo}/blobs/uploads/", method="POST", data=b"")
        location = urllib.request.urlopen(req).headers["Location"]
        url = location if location.startswith("http") else f"http://{registry_host}{location}"
        sep = "&" if "?" in url else "?"
        urllib.request.urlopen(urllib.request.Request(f"{url}{sep}digest={digest}", method="PUT", data=data,
                                                      headers={"Content-Type": "application/octet-stream"})).read()
        return {"mediaType": media_type, "digest": digest, "size": len(data)}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": blob(config_bytes, "application/vnd.oci.image.config.v1+json"),
                "layers": [blob(data, media_type) for data, media_type in layers]}
    urllib.request.urlopen(urllib.request.Request(f"http://{registry_host}/v2/{repo}/manifests/{tag}", method="PUT", data=json.dumps(manifest).encode(),
                                                  headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})).read()
    return f"{registry_host}/{repo}:{tag}"


def busybox_image(registry_host, repo="busybox", tag="v1", cmd=("httpd", "-f", "-p", "8080", "-h", "/www"), **kw):
    page = kw.pop("page", b"hello from a container\n")
    return push(registry_host, repo, tag, config(list(cmd), **kw), busybox_layers(page))
