#!/usr/bin/env bash
# Regenerates crates/skiff-apiserver/proto/kubernetes.fds: the protobuf wire schema (message
# and field names and numbers, no comments) of the Kubernetes API groups Skiff serves, which
# the API server reads to speak `application/vnd.kubernetes.protobuf`.
#
# The .proto files come from a checkout of github.com/kube-rs/k8s-pb (the maintained Rust
# Kubernetes protobuf crate; its `k8s-pb-codegen/protos` folder holds upstream's
# generated.proto files with import paths shortened). Usage:
#   scripts/kubernetes-descriptors.sh /path/to/k8s-pb
# Needs protoc (Debian's protobuf-compiler). Add a group here when Skiff starts serving it.
set -euo pipefail
checkout="${1:?usage: $0 /path/to/k8s-pb checkout}"
out="$(cd "$(dirname "$0")/.." && pwd)/crates/skiff-apiserver/proto/kubernetes.fds"
cd "$checkout/k8s-pb-codegen/protos"
protoc -I. --include_imports -o "$out" \
    apimachinery/pkg/runtime/generated.proto \
    apimachinery/pkg/apis/meta/v1/generated.proto \
    api/core/v1/generated.proto \
    api/apps/v1/generated.proto \
    api/batch/v1/generated.proto \
    api/autoscaling/v1/generated.proto \
    api/autoscaling/v2/generated.proto \
    api/networking/v1/generated.proto \
    api/coordination/v1/generated.proto \
    api/discovery/v1/generated.proto \
    api/node/v1/generated.proto \
    api/rbac/v1/generated.proto \
    api/policy/v1/generated.proto \
    api/authentication/v1/generated.proto \
    api/authorization/v1/generated.proto 2> >(grep -v "is unused" >&2)
echo "wrote $out ($(wc -c < "$out") bytes)"
