#!/usr/bin/env bash
# Builds the test cluster's node from the Go module proxy (versions pinned in go.mod/go.sum
# here and, for kubelet and kube-proxy, in ../cluster/go.mod): kubelet, kube-proxy,
# containerd (with ctr and the runc shim), runc, the CNI plugins bridge, host-local, loopback
# and portmap, CoreDNS and kube-router (its NetworkPolicy firewall). Binaries land in a
# versioned folder under the cache dir, so a second run rebuilds nothing. Prints that folder.
#
# runc needs cgo and libseccomp (Debian's libseccomp-dev), as its own release builds do.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cluster=$(cd "$here/../cluster" && pwd)
source "$here/../../scripts/lib.sh"
ensure_go
ensure_packages gcc libc6-dev pkg-config libseccomp-dev

version() { awk -v m="$2" '$1 == m { print $2; exit }' "$1/go.mod"; }
kube=$(version "$cluster" k8s.io/kubernetes)
containerd=$(version "$here" github.com/containerd/containerd/v2)
# The folder changes whenever the versions or this recipe do, so a stale build is never reused.
recipe=$(cat "$here/go.mod" "$here/go.sum" "$cluster/go.mod" "$cluster/go.sum" "$0" | sha256sum | cut -c1-12)
out="$STICKYFARM_CACHE/node/kubernetes-$kube-containerd-$containerd-$recipe"
mkdir -p "$out/cni"

# What `make` stamps into a Kubernetes release (the kubelet reports it as the node's version).
kube_ldflags() {
  local minor=${kube#v1.}; minor=${minor%%.*}
  local flags=""
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $p.gitVersion=$kube -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  echo "$flags"
}
containerd_ldflags() {
  echo "-X github.com/containerd/containerd/v2/version.Version=$containerd"
}

build() { # module-dir output package [cgo tags]
  local dir=$1 name=$2 pkg=$3 tags=${4:-}
  if [ -x "$out/$name" ]; then return 0; fi
  echo "building $name from $pkg (first time only)..." >&2
  local start ldflags="-s -w" cgo=0
  start=$(date +%s)
  case $pkg in
    k8s.io/kubernetes/*) ldflags+=" $(kube_ldflags)" ;;
    github.com/containerd/*) ldflags+=" $(containerd_ldflags)" ;;
  esac
  # runc needs cgo (nsexec, seccomp); everything else is static Go.
  [ -n "$tags" ] && cgo=1
  (cd "$dir" && CGO_ENABLED=$cgo go build -trimpath ${tags:+-tags "$tags"} \
    -ldflags "$ldflags" -o "$out/$name.tmp" "$pkg")
  mv "$out/$name.tmp" "$out/$name"
  echo "built $name in $(( $(date +%s) - start )) s" >&2
}

build "$cluster" kubelet k8s.io/kubernetes/cmd/kubelet
build "$cluster" kube-proxy k8s.io/kubernetes/cmd/kube-proxy
build "$here" containerd github.com/containerd/containerd/v2/cmd/containerd
build "$here" containerd-shim-runc-v2 github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2
build "$here" ctr github.com/containerd/containerd/v2/cmd/ctr
build "$here" runc github.com/opencontainers/runc "seccomp urfave_cli_no_docs"
for plugin in main/bridge ipam/host-local main/loopback meta/portmap; do
  build "$here" "cni/${plugin#*/}" "github.com/containernetworking/plugins/plugins/$plugin"
done
build "$here" coredns github.com/coredns/coredns
build "$here" kube-router github.com/cloudnativelabs/kube-router/v2/cmd/kube-router
echo "$out"
