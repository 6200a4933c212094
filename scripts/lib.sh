# Shared helpers of the scripts in this folder (sourced, not run).

# Caches live outside the checkout so warm runs are quick.
export STICKYFARM_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/stickyfarm"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$STICKYFARM_CACHE/target}"
# No incremental data: these builds start from a fresh checkout, where it saves nothing, and
# kept for every test binary it grows by gigabytes a run on disks that have little to spare.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"

# Installs Debian packages that are missing (as root; otherwise says what to install).
ensure_packages() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages: ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
    return 1
  fi
  echo "installing ${missing[*]} from Debian packages..." >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
}

# Rust 1.94+ is needed (sqlx 0.9). Debian's own rustc is older, so it comes from rustup.
ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: Stickyfarm needs Rust 1.94 or newer (rustup.rs toolchain)" >&2
    return 1
  fi
  local v
  v=$(rustc --version | awk '{print $2}')
  if [ "$(printf '%s\n1.94.0\n' "$v" | sort -V | head -n 1)" != "1.94.0" ]; then
    echo "Rust $v is too old: Stickyfarm needs 1.94 or newer (rustup update)" >&2
    return 1
  fi
  ensure_packages pkg-config gcc libc6-dev
}

# stage NAME COMMAND...: runs a command and prints how long it took.
stage() {
  local name=$1 start end
  shift
  echo "==> $name" >&2
  start=$(date +%s)
  "$@"
  end=$(date +%s)
  echo "==> $name: $((end - start)) s" >&2
}

# Go builds helm (and, later, the control plane) from the Go module proxy. /usr/local/go is
# where the official toolchain lands; Debian's golang-go is the fallback. GOTOOLCHAIN=auto lets
# an older go fetch the toolchain a module needs, from the same proxy.
ensure_go() {
  [ -x /usr/local/go/bin/go ] && export PATH="/usr/local/go/bin:$PATH"
  command -v go >/dev/null 2>&1 || ensure_packages golang-go
  export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
  export GOMODCACHE="${GOMODCACHE:-$STICKYFARM_CACHE/go/mod}"
  export GOCACHE="${GOCACHE:-$STICKYFARM_CACHE/go/build}"
}

# Helm, built once from helm.sh/helm/v3 at the version e2e/cluster/go.mod pins (go.sum checks
# it), kept in a versioned folder.
_scripts_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HELM_VERSION=$(awk '$1 == "helm.sh/helm/v3" { print $2; exit }' "$_scripts_dir/../e2e/cluster/go.mod")
export HELM="$STICKYFARM_CACHE/tools/helm-$HELM_VERSION/helm"
ensure_helm() {
  [ -x "$HELM" ] && return 0
  ensure_go
  echo "building helm $HELM_VERSION from the Go module proxy (once; a few minutes)..." >&2
  (cd "$_scripts_dir/../e2e/cluster" && go build -trimpath -o "$HELM" helm.sh/helm/v3/cmd/helm)
}

# helm lint and helm template of the chart, with the value combinations users pick.
check_chart() {
  local k=(--kube-version 1.37.0)
  "$HELM" lint charts/stickyfarm "${k[@]}"
  "$HELM" lint charts/stickyfarm "${k[@]}" --set crds.enabled=false,watchNamespace=shop,replicaCount=2
  "$HELM" template sf charts/stickyfarm "${k[@]}" --namespace stickyfarm-system >/dev/null
  "$HELM" template sf charts/stickyfarm "${k[@]}" --set metrics.enabled=false,networkPolicy.enabled=false,leaderElection.enabled=false >/dev/null
  # The Prometheus Operator objects, as a cluster serving their CRDs gets them.
  "$HELM" lint charts/stickyfarm "${k[@]}" --set monitoring.rules.force=true,monitoring.podMonitor.force=true,monitoring.serviceMonitor.force=true
  # Two operators without leader election must be refused.
  if "$HELM" template sf charts/stickyfarm "${k[@]}" --set leaderElection.enabled=false,replicaCount=2 >/dev/null 2>&1; then
    echo "the chart accepted two replicas without leader election" >&2
    return 1
  fi
}

# A loopback port free right now (the kernel's pick), for a process a script starts.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# oha (load at a fixed rate for the benchmarks), built once from crates.io at a pinned version
# with its own lock file.
OHA_VERSION=1.16.0
export OHA="$STICKYFARM_CACHE/tools/oha-$OHA_VERSION/bin/oha"
ensure_oha() {
  [ -x "$OHA" ] && return 0
  echo "building oha $OHA_VERSION from crates.io (once; a few minutes)..." >&2
  # Its own temporary target folder (removed afterwards), not the workspace's.
  env -u CARGO_TARGET_DIR cargo install oha --version "$OHA_VERSION" --locked --quiet \
    --root "$STICKYFARM_CACHE/tools/oha-$OHA_VERSION"
}

# The session adapters' toolchains (adapters/), from Debian's packages when missing.
ensure_node() { command -v npm >/dev/null 2>&1 || ensure_packages nodejs npm; }
ensure_maven() { command -v mvn >/dev/null 2>&1 || ensure_packages maven default-jdk-headless; }
# The Python adapter, editable, with its pinned dev requirements, in a venv outside the
# checkout: $ADAPTERS_VENV.
adapters_python_venv() {
  python3 -c 'import venv, ensurepip' 2>/dev/null || ensure_packages python3-venv
  ADAPTERS_VENV="$STICKYFARM_CACHE/venv-adapters"
  [ -x "$ADAPTERS_VENV/bin/pip" ] || python3 -m venv "$ADAPTERS_VENV"
  "$ADAPTERS_VENV/bin/pip" install -q --disable-pip-version-check \
    -r "$_scripts_dir/../adapters/python/requirements-dev.lock"
  "$ADAPTERS_VENV/bin/pip" install -q --disable-pip-version-check --no-build-isolation --no-deps \
    -e "$_scripts_dir/../adapters/python"
}

# Stickyfarm's images: the Dockerfile's final stages (`FROM runtime AS <component>`), one name
# a line. e2e/kind builds them with Docker, e2e/node/images/build assembles them for the test
# node: both from this one list.
stickyfarm_components() {
  sed -n 's/^FROM runtime AS \([a-z]*\)$/\1/p' "$_scripts_dir/../Dockerfile"
}
# The ports a component's stage EXPOSEs, space-separated.
stickyfarm_exposed_ports() {
  awk -v c="$1" '/^FROM / {stage = $NF} stage == c && $1 == "EXPOSE" {$1 = ""; print}' "$_scripts_dir/../Dockerfile" | xargs
}
