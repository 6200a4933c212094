# The test node's constants, shared by e2e/cluster/up, e2e/node/up and e2e/node/down (sourced).

NODE_NAME=stickyfarm-node
# The node's address, on a bridge of its own: pods reach the API server through the kubernetes
# Service, whose endpoint must not be a loopback address (and this sandbox has no dummy link).
NODE_BRIDGE=sfnode0
NODE_IP=10.200.0.1
NODE_CIDR=10.200.0.1/24
POD_BRIDGE=sfcni0
POD_SUBNET=10.244.0.0/24
SERVICE_RANGE=10.96.0.0/16
DNS_IP=10.96.0.10
KUBELET_PORT=10250
KUBELET_HEALTHZ_PORT=10248
KUBE_PROXY_HEALTHZ_PORT=10256
KUBE_PROXY_METRICS_PORT=10249
PAUSE_IMAGE=localhost/stickyfarm-e2e/pause:1
COREDNS_IMAGE=localhost/stickyfarm-e2e/coredns:1
POSTGRES_IMAGE=localhost/stickyfarm-e2e/postgres:15
BUSYBOX_IMAGE=localhost/stickyfarm-e2e/busybox:1
# What the kubelet and the node's network change, restored by down.
NODE_SYSCTLS=(kernel.panic kernel.panic_on_oops vm.overcommit_memory net.ipv4.ip_forward
  net.bridge.bridge-nf-call-iptables)

# Why this machine cannot run the node, or nothing.
node_unsupported() {
  [ "$(id -u)" = 0 ] || { echo "the node runs containers and changes the network: run as root"; return; }
  [ -d /sys/fs/cgroup/memory ] || [ -f /sys/fs/cgroup/cgroup.controllers ] || { echo "no cgroups mounted at /sys/fs/cgroup"; return; }
  grep -qw overlay /proc/filesystems || { echo "the kernel has no overlay filesystem (containerd's snapshotter needs it)"; return; }
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || { echo "the kernel has no bridge netfilter (br_netfilter): Services would not reach pods on the bridge"; return; }
  ip link add sfprobe0 type bridge 2>/dev/null || { echo "cannot create a bridge link (network namespace rights missing)"; return; }
  ip link delete sfprobe0
}

# The one node this machine can hold (its bridges and addresses are fixed) writes its cluster
# folder here; down removes it. A run killed before its down (a restart, a cancelled job)
# leaves it behind with the node's mounts, bridges and chains, for e2e/node/reclaim to find.
NODE_RECORD=/run/stickyfarm-e2e-node

# Whether PID is a process of the cluster in DIR (its command line names DIR). Pids recorded
# by a run that was killed may since belong to another program, which must not be signalled.
cluster_process() { # dir pid
  [ -r "/proc/$2/cmdline" ] && tr '\0' ' ' <"/proc/$2/cmdline" | grep -qF -- "$1/"
}
