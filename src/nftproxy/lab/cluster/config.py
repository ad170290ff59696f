"""What the local cluster looks like, and the configuration files of its parts, as pure data.

Addresses: the nodes and the control plane share one bridge network (`NODE_NET`, kept outside
the Service range: kube-proxy drops new connections to unallocated addresses of its Service
CIDR, node IPs included), each node gets a /24 of `POD_NET` for its pods, and Services get
ClusterIPs from `SERVICE_NET`. Nothing has a default route: the cluster is closed.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "API_PORT",
    "API_SERVICE_IP",
    "DNS_DOMAIN",
    "DNS_SERVICE_IP",
    "KUBELET_SYSCTLS",
    "NODE_NET",
    "POD_NET",
    "PRIVATE_DIRS",
    "PROXIES",
    "SERVICE_NET",
    "ConfigError",
    "Node",
    "Spec",
    "cni_config",
    "containerd_config",
    "coredns_manifests",
    "corefile",
    "kube_proxy_config",
    "kubeconfig",
    "kubelet_config",
    "node_mounts",
    "resolv_conf",
]

NODE_NET = ipaddress.IPv4Network("10.200.0.0/24")
POD_NET = ipaddress.IPv4Network("10.244.0.0/16")
SERVICE_NET = ipaddress.IPv4Network("10.96.0.0/16")
API_SERVICE_IP = "10.96.0.1"
DNS_SERVICE_IP = "10.96.0.10"
DNS_DOMAIN = "cluster.local"
API_PORT = 6443
PROXIES = ("nftproxy", "kube-proxy")

# The values the kubelet insists on for these VM-wide sysctls. Each node sees files holding
# them, bind-mounted over /proc/sys in its own mount namespace, so the kubelet finds nothing
# to change and the VM's own values stay as they are.
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}

_NAME = re.compile(r"^[a-z][a-z0-9]{0,9}$")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Node:
    index: int  # 1-based
    name: str  # the Kubernetes node name, also its host name
    ip: str
    pod_cidr: str
    netns: str
    cgroup_root: str  # kubelet's cgroupRoot, one per node in every v1 hierarchy
    zone: str  # topology.kubernetes.io/zone: a zone each, for the topology specs


@dataclass(frozen=True)
class Spec:
    name: str
    dir: Path
    nodes: int = 2
    proxy: str = "nftproxy"

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(
                f"cluster name {self.name!r}: 1-10 lowercase letters and digits, starting "
                "with a letter (it prefixes network namespace and cgroup names)"
            )
        if not 1 <= self.nodes <= 9:
            raise ConfigError(f"--nodes {self.nodes}: 1 to 9 nodes")
        if self.proxy not in PROXIES:
            raise ConfigError(f"--proxy {self.proxy!r}: one of {', '.join(PROXIES)}")

    @property
    def cp_netns(self) -> str:
        return f"{self.name}-cp"

    @property
    def cp_ip(self) -> str:
        return str(NODE_NET.network_address + 1)

    @property
    def server(self) -> str:
        return f"https://{self.cp_ip}:{API_PORT}"

    def node(self, index: int) -> Node:
        name = f"node{index}"
        return Node(
            index=index,
            name=name,
            ip=str(NODE_NET.network_address + 10 + index),
            pod_cidr=str(list(POD_NET.subnets(new_prefix=24))[index]),
            netns=f"{self.name}-{name}",
            cgroup_root=f"/nftproxy-{self.name}-{name}",
            zone=f"zone-{'abcdefghi'[index - 1]}",
        )

    def all_nodes(self) -> list[Node]:
        return [self.node(i) for i in range(1, self.nodes + 1)]

    def netns_names(self) -> list[str]:
        return [self.cp_netns] + [n.netns for n in self.all_nodes()]

    def node_dir(self, node: Node) -> Path:
        return self.dir / "nodes" / node.name


def kubeconfig(server: str, ca: Path, token: str, user: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "local", "cluster": {"server": server, "certificate-authority": str(ca)}}
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
            "current-context": "local",
        },
        indent=2,
    )


def containerd_config(spec: Spec, node: Node, bin_dir: Path) -> str:
    d = spec.node_dir(node) / "containerd"
    return f"""version = 3
root = '{d}/root'
state = '{d}/state'
imports = []
oom_score = 0
# Nothing this cluster does needs them, and each would read or write outside the node.
disabled_plugins = [
  'io.containerd.internal.v1.opt',
  'io.containerd.nri.v1.nri',
  'io.containerd.snapshotter.v1.btrfs',
  'io.containerd.snapshotter.v1.zfs',
  'io.containerd.snapshotter.v1.devmapper',
]

[grpc]
  address = '{d}/containerd.sock'

[ttrpc]
  address = '{d}/containerd.sock.ttrpc'

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = 'registry.k8s.io/pause:3.10.2'

[plugins.'io.containerd.cri.v1.runtime']
  # The VM's bounding set lacks CAP_SYS_RESOURCE: never lower an OOM score.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_cdi = false
  cdi_spec_dirs = []
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = 'io.containerd.runc.v2'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      BinaryName = '{bin_dir}/runc'
      Root = '{d}/runc'
      SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['{spec.dir}/cni-bin']
    conf_dir = '{spec.node_dir(node)}/cni'

[plugins.'io.containerd.image-verifier.v1.bindir']
  bin_dir = '{d}/image-verifiers'

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
"""


# Fresh and private in each node's mount namespace: what the parts write to fixed places
# there (host-local's leases and libcni's cache under /var/lib/cni, the kubelet's
# /var/lib/kubelet/device-plugins, /var/log/containers, runc and shim state under /run,
# temporary files) never reaches the machine, and two nodes never share it.
PRIVATE_DIRS = ("/run", "/var/lib", "/var/log", "/tmp")


def node_mounts(spec: Spec, node: Node, keep: Sequence[Path] = ()) -> list[str]:
    """Shell commands, run in the node's new mount and UTS namespace before any part starts.

    `keep`: paths the node's processes need (the binaries, this Python, the checkout) that
    must stay visible even when they lie under a directory made private; the cluster's own
    directory always does."""
    q = shlex.quote
    wanted = sorted({spec.dir, *keep}, key=lambda p: len(p.parts))
    hidden: list[Path] = []
    for path in wanted:
        if path.is_relative_to("/run"):
            raise ConfigError(f"{path}: the cluster cannot use paths under /run")
        under = any(path.is_relative_to(p) for p in PRIVATE_DIRS[1:])
        if under and not any(path.is_relative_to(h) for h in hidden):
            hidden.append(path)
    cmds = [f"hostname {q(node.name)}", "mount -t tmpfs -o mode=755 tmpfs /run"]
    for i, path in enumerate(hidden):
        cmds += [
            f"mkdir -p /run/nftproxy-keep/{i}",
            f"mount --bind {q(str(path))} /run/nftproxy-keep/{i}",
        ]
    for private in PRIVATE_DIRS[1:]:
        mode = "1777" if private == "/tmp" else "755"
        cmds.append(f"mount -t tmpfs -o mode={mode} tmpfs {private}")
    for i, path in enumerate(hidden):
        cmds += [f"mkdir -p {q(str(path))}", f"mount --bind /run/nftproxy-keep/{i} {q(str(path))}"]
    cmds.append("mkdir -p /run/netns /run/containerd")
    d = spec.node_dir(node)
    for key in KUBELET_SYSCTLS:
        sysctl_file = d / "sysctl" / key.replace("/", ".")
        cmds.append(f"mount --bind {q(str(sysctl_file))} /proc/sys/{key}")
    return cmds


def cni_config(spec: Spec, node: Node) -> str:
    gateway = str(ipaddress.IPv4Network(node.pod_cidr).network_address + 1)
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "pods",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "ipMasq": False,
                    # As the kubelet's own bridge did: a pod reaches itself through a
                    # Service only when its bridge port may send a frame back out.
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(spec.node_dir(node) / "ipam"),
                        "ranges": [[{"subnet": node.pod_cidr, "gateway": gateway}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                # hostPort: a table of its own in the node's namespace (nft, not iptables).
                {"type": "portmap", "capabilities": {"portMappings": True}, "backend": "nftables"},
            ],
        },
        indent=2,
    )


def kubelet_config(spec: Spec, node: Node) -> str:
    d = spec.node_dir(node)
    pki = spec.dir / "pki"
    return json.dumps(
        {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": node.ip,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": str(pki / f"kubelet-{node.name}.crt"),
            "tlsPrivateKeyFile": str(pki / f"kubelet-{node.name}.key"),
            "containerRuntimeEndpoint": f"unix://{d}/containerd/containerd.sock",
            # The VM mounts cgroup v1 (hybrid) and its PID 1 is not systemd.
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "cgroupRoot": node.cgroup_root,
            "failSwapOn": False,
            # The kubelet would lower its own OOM score, which needs CAP_SYS_RESOURCE.
            "oomScoreAdj": 0,
            "clusterDNS": [DNS_SERVICE_IP],
            "clusterDomain": DNS_DOMAIN,
            "resolvConf": str(d / "resolv.conf"),
            "podLogsDir": str(d / "pod-logs"),
            "volumePluginDir": str(d / "volume-plugins"),
            "staticPodPath": "",
            "serializeImagePulls": False,
            "imageGCHighThresholdPercent": 100,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "kubeAPIQPS": 50,
            "kubeAPIBurst": 100,
            "protectKernelDefaults": False,
        },
        indent=2,
    )


def kube_proxy_config(spec: Spec, node: Node) -> str:
    return json.dumps(
        {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "nftables",
            "clientConnection": {"kubeconfig": str(spec.dir / "kubeconfig" / "kube-proxy.conf")},
            "hostnameOverride": node.name,
            "clusterCIDR": str(POD_NET),
            "healthzBindAddress": "0.0.0.0:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            # Zero: leave the machine-wide conntrack table size alone. The timeouts it
            # sets (its defaults) are the node's network namespace's own.
            "conntrack": {"maxPerCore": 0, "min": 0},
        },
        indent=2,
    )


def resolv_conf() -> str:
    # Nothing listens there: a lookup the cluster cannot answer fails at once instead of
    # leaving for the VM's resolver.
    return "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"


def corefile() -> str:
    return f""".:53 {{
    errors
    health {{
        lameduck 5s
    }}
    ready
    kubernetes {DNS_DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    cache 30
    loop
    reload
    loadbalance
}}
"""


def coredns_manifests(image: str) -> list[dict[str, object]]:
    """CoreDNS as a cluster add-on, under the names the e2e DNS specs look for."""
    labels = {"k8s-app": "kube-dns"}
    meta = {"name": "coredns", "namespace": "kube-system"}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:coredns",
            },
            "subjects": [{"kind": "ServiceAccount", **meta}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta,
            "data": {"Corefile": corefile()},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {**meta, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "coredns",
                        "priorityClassName": "system-cluster-critical",
                        "dnsPolicy": "Default",
                        "containers": [
                            {
                                "name": "coredns",
                                "image": image,
                                "imagePullPolicy": "Never",
                                "args": ["-conf", "/etc/coredns/Corefile"],
                                "ports": [
                                    {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                    {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                                    {"name": "metrics", "containerPort": 9153},
                                ],
                                "readinessProbe": {
                                    "httpGet": {"path": "/ready", "port": 8181},
                                    "periodSeconds": 2,
                                },
                                "livenessProbe": {
                                    "httpGet": {"path": "/health", "port": 8080},
                                    "initialDelaySeconds": 30,
                                },
                                "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}],
                            }
                        ],
                        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "kube-dns",
                "namespace": "kube-system",
                "labels": {**labels, "kubernetes.io/name": "CoreDNS"},
            },
            "spec": {
                "selector": labels,
                "clusterIP": DNS_SERVICE_IP,
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                    {"name": "metrics", "port": 9153, "protocol": "TCP"},
                ],
            },
        },
    ]
