#!/bin/sh
# Builds the frontend's container image as an OCI image layout in DIR (one layer: Debian's
# static busybox, whose httpd serves www/ and runs its CGI scripts), with nothing but tar,
# gzip and sha256sum: no daemon, no registry, no network. Push it with skopeo (README).
set -eu
out=${1:?usage: build-image.sh DIR}
here=$(cd "$(dirname "$0")" && pwd)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/etc" "$root/www/cgi-bin" "$out/blobs/sha256"
cp /usr/bin/busybox "$root/bin/busybox"
for applet in sh httpd wget nslookup awk cat echo printf; do ln -s busybox "$root/bin/$applet"; done
cp "$here/www/index.html" "$root/www/"
cp "$here/www/cgi-bin/call" "$root/www/cgi-bin/call"
chmod 0755 "$root/www/cgi-bin/call"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"

# blob FILE: moves FILE into the layout under its digest; prints "DIGEST SIZE".
blob() {
    digest=$(sha256sum "$1" | cut -d' ' -f1)
    size=$(wc -c < "$1")
    mv "$1" "$out/blobs/sha256/$digest"
    echo "sha256:$digest $size"
}
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$out/layer.tar" .
diff_id=sha256:$(sha256sum "$out/layer.tar" | cut -d' ' -f1)
gzip -n "$out/layer.tar"
set -- $(blob "$out/layer.tar.gz"); layer=$1 layer_size=$2
printf '{"architecture":"%s","os":"linux","config":{"Cmd":["httpd","-f","-p","8080","-h","/www"],"Env":["PATH=/bin"]},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
    "$(dpkg --print-architecture)" "$diff_id" > "$out/config.json"
set -- $(blob "$out/config.json"); config=$1 config_size=$2
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%s}]}' \
    "$config" "$config_size" "$layer" "$layer_size" > "$out/manifest.json"
set -- $(blob "$out/manifest.json"); manifest=$1 manifest_size=$2
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"v1"}}]}' \
    "$manifest" "$manifest_size" > "$out/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' > "$out/oci-layout"
echo "built $out (tag v1)"
