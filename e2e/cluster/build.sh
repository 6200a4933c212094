#!/usr/bin/env bash
# Builds the test control plane from the Go module proxy (versions pinned in go.mod/go.sum):
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (k8s.io/kubernetes) and etcd
# (go.etcd.io/etcd/server/v3). Binaries land in a versioned folder under the cache dir, so a
# second run rebuilds nothing. Prints that folder on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../../scripts/lib.sh"

if ! command -v go >/dev/null 2>&1 && [ ! -x /usr/local/go/bin/go ]; then
  ensure_go || { echo "Go is missing: install Go 1.26 (or Debian's golang-go) to build the control plane" >&2; exit 1; }
fi
ensure_go

version() { awk -v m="$1" '$1 == m { print $2; exit }' "$here/go.mod"; }
kube=$(version k8s.io/kubernetes)
etcd=$(version go.etcd.io/etcd/server/v3)
# The folder changes whenever the versions or this recipe do, so a stale build is never reused.
recipe=$(cat "$here/go.mod" "$here/go.sum" "$0" | sha256sum | cut -c1-12)
out="$STICKYFARM_CACHE/control-plane/kubernetes-$kube-etcd-$etcd-$recipe"
mkdir -p "$out"

# The version the components report (what `make` stamps in a Kubernetes release; without it
# they say v0.0.0-master and helm refuses charts with a kubeVersion).
version_ldflags() {
  local minor=${kube#v1.}; minor=${minor%%.*}
  local flags=""
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $p.gitVersion=$kube -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  echo "$flags"
}

build() {
  local name=$1 pkg=$2
  if [ -x "$out/$name" ]; then return 0; fi
  echo "building $name from $pkg (first time only; several minutes on 2 cores)..." >&2
  local start=$(date +%s)
  (cd "$here" && go build -trimpath -ldflags "-s -w $(version_ldflags)" -o "$out/$name.tmp" "$pkg")
  mv "$out/$name.tmp" "$out/$name"
  echo "built $name in $(( $(date +%s) - start )) s" >&2
}

build etcd go.etcd.io/etcd/server/v3
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
build kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
build kubectl k8s.io/kubernetes/cmd/kubectl
echo "$out"
