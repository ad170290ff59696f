"""An app's objects as the cluster has them now, read with the user's own token: what its
release's manifests made (Deployments ready/total, Pods, Services and their addresses,
Ingresses, and the rest by name), each with a status a user can act on."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from nftproxy.kube.client import ApiError, Client
from nftproxy.sources.manifests import ReadLimits, read_yaml_documents

__all__ = [
    "MANIFEST_LIMITS",
    "LiveApp",
    "ObjectRef",
    "Resource",
    "api_path",
    "live_resources",
    "object_refs",
    "pod_rows",
    "status_of",
]

MANIFEST_LIMITS = ReadLimits(max_file_bytes=4 << 20, max_document_chars=4 << 20, max_depth=64)
MAX_OBJECTS = 500  # objects of one app looked up
_READS_AT_ONCE = 8

# The API path of kinds a chart commonly makes: (group/version, plural, namespaced).
_KINDS: dict[str, tuple[str, str, bool]] = {
    "Deployment": ("apis/apps/v1", "deployments", True),
    "StatefulSet": ("apis/apps/v1", "statefulsets", True),
    "DaemonSet": ("apis/apps/v1", "daemonsets", True),
    "ReplicaSet": ("apis/apps/v1", "replicasets", True),
    "Pod": ("api/v1", "pods", True),
    "Service": ("api/v1", "services", True),
    "ConfigMap": ("api/v1", "configmaps", True),
    "Secret": ("api/v1", "secrets", True),
    "ServiceAccount": ("api/v1", "serviceaccounts", True),
    "PersistentVolumeClaim": ("api/v1", "persistentvolumeclaims", True),
    "Ingress": ("apis/networking.k8s.io/v1", "ingresses", True),
    "NetworkPolicy": ("apis/networking.k8s.io/v1", "networkpolicies", True),
    "Job": ("apis/batch/v1", "jobs", True),
    "CronJob": ("apis/batch/v1", "cronjobs", True),
    "HorizontalPodAutoscaler": ("apis/autoscaling/v2", "horizontalpodautoscalers", True),
    "PodDisruptionBudget": ("apis/policy/v1", "poddisruptionbudgets", True),
    "Role": ("apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
}
_WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")


@dataclass(frozen=True, slots=True, order=True)
class ObjectRef:
    kind: str
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Resource:
    ref: ObjectRef
    status: str  # short: "2/3 ready", "Running", "exists", "missing"...
    healthy: bool | None  # None: nothing to judge
    details: tuple[str, ...] = ()
    pods: tuple[Resource, ...] = field(default=())


def object_refs(manifest: str, namespace: str) -> tuple[list[ObjectRef], list[str]]:
    """The objects a release's manifests name (its namespace where they name none), and
    what could not be read of them."""
    documents, errors = read_yaml_documents(manifest.encode(), MANIFEST_LIMITS)
    refs: list[ObjectRef] = []
    for doc in documents:
        items = doc.get("items") if isinstance(doc, dict) and doc.get("kind") == "List" else [doc]
        for obj in items if isinstance(items, list) else []:
            if not isinstance(obj, dict):
                continue
            meta = _map(obj.get("metadata"))
            kind, name = obj.get("kind"), meta.get("name")
            if isinstance(kind, str) and isinstance(name, str) and kind and name:
                ns = meta.get("namespace")
                refs.append(ObjectRef(kind, ns if isinstance(ns, str) and ns else namespace, name))
    return sorted(set(refs))[:MAX_OBJECTS], errors


# Object names and namespaces as the API server accepts them: anything else in a release's
# manifests (a "/" reaching a subresource such as services/proxy, a "?" adding a query) is
# not looked up. The manifests are anyone's who may write Secrets in the namespace.
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def api_path(ref: ObjectRef) -> str | None:
    """The object's API path, or None for a kind not looked up or a name the API server
    would not have accepted."""
    known = _KINDS.get(ref.kind)
    if known is None or not _NAME.fullmatch(ref.name) or not _NAMESPACE.fullmatch(ref.namespace):
        return None
    prefix, plural, _ = known
    name, namespace = quote(ref.name, safe=""), quote(ref.namespace, safe="")
    return f"/{prefix}/namespaces/{namespace}/{plural}/{name}"


def _get(obj: Mapping[str, Any], *keys: str) -> Any:
    value: Any = obj
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _ports(spec: Mapping[str, Any]) -> list[str]:
    out = []
    for p in spec.get("ports") or []:
        if not isinstance(p, dict):
            continue
        text = f"{p.get('port')}/{p.get('protocol', 'TCP')}"
        if p.get("nodePort"):
            text += f" (NodePort {p['nodePort']})"
        out.append(text)
    return out


def status_of(kind: str, obj: Mapping[str, Any]) -> tuple[str, bool | None, tuple[str, ...]]:
    """(status, healthy, details) of one live object."""
    spec = _map(obj.get("spec"))
    status = _map(obj.get("status"))
    if kind in ("Deployment", "StatefulSet"):
        wanted = spec.get("replicas", 1)
        ready = status.get("readyReplicas", 0)
        return f"{ready}/{wanted} ready", ready >= wanted, ()
    if kind == "DaemonSet":
        wanted, ready = status.get("desiredNumberScheduled", 0), status.get("numberReady", 0)
        return f"{ready}/{wanted} ready", ready >= wanted, ()
    if kind == "Pod":
        containers = status.get("containerStatuses") or []
        ready = sum(1 for c in containers if isinstance(c, dict) and c.get("ready"))
        restarts = sum(int(c.get("restartCount", 0)) for c in containers if isinstance(c, dict))
        phase = str(status.get("phase", "Pending"))
        total = len(spec.get("containers") or []) or len(containers)
        details = [f"node {spec['nodeName']}"] if spec.get("nodeName") else ["not scheduled"]
        if status.get("podIP"):
            details.append(f"IP {status['podIP']}")
        if restarts:
            details.append(f"{restarts} restarts")
        return (
            f"{phase}, {ready}/{total} ready",
            phase == "Running" and ready == total,
            tuple(details),
        )
    if kind == "Service":
        kind_of = str(spec.get("type", "ClusterIP"))
        details = []
        ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
        if ips:
            details.append("ClusterIP " + ", ".join(map(str, ips)))
        details += _ports(spec)
        ingress = _get(status, "loadBalancer", "ingress") or []
        lb = [str(i.get("ip") or i.get("hostname")) for i in ingress if isinstance(i, dict)]
        if lb:
            details.append("LoadBalancer " + ", ".join(lb))
        elif kind_of == "LoadBalancer":
            details.append("LoadBalancer address pending")
        if spec.get("externalIPs"):
            details.append("external IPs " + ", ".join(map(str, spec["externalIPs"])))
        return kind_of, None, tuple(details)  # judged by its endpoints, on the network panel
    if kind == "Ingress":
        hosts = [str(r.get("host") or "*") for r in spec.get("rules") or [] if isinstance(r, dict)]
        ingress = _get(status, "loadBalancer", "ingress") or []
        addresses = [str(i.get("ip") or i.get("hostname")) for i in ingress if isinstance(i, dict)]
        shown = ["hosts " + ", ".join(hosts)] if hosts else []
        shown.append("address " + ", ".join(addresses) if addresses else "no address yet")
        return "Ingress", None, tuple(shown)
    if kind == "Job":
        done, failed = status.get("succeeded", 0), status.get("failed", 0)
        return f"{done} succeeded, {failed} failed", failed == 0 if done else None, ()
    if kind == "PersistentVolumeClaim":
        phase = str(status.get("phase", "Pending"))
        return phase, phase == "Bound", ()
    return "exists", None, ()


def _selector(obj: Mapping[str, Any]) -> str | None:
    labels = _get(obj, "spec", "selector", "matchLabels")
    if not isinstance(labels, dict) or not labels:
        return None
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def pod_rows(pods: Iterable[Mapping[str, Any]]) -> tuple[Resource, ...]:
    rows = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        ref = ObjectRef("Pod", str(meta.get("namespace", "")), str(meta.get("name", "")))
        rows.append(Resource(ref, *status_of("Pod", pod)))
    return tuple(sorted(rows, key=lambda r: r.ref))


@dataclass(frozen=True, slots=True)
class LiveApp:
    resources: list[Resource]
    services: list[dict[str, Any]]  # the app's Services as the API has them
    slices: list[dict[str, Any]]  # and their EndpointSlices
    # Services whose EndpointSlices could not be read (the user's rights, say), and why.
    unknown_endpoints: dict[tuple[str, str], str] = field(default_factory=dict)


def live_resources(client: Client, refs: Sequence[ObjectRef]) -> LiveApp:
    """Each object as the cluster has it now, read with the client's (the user's) token;
    the Pods of each workload under it; the EndpointSlices of each Service."""
    services: list[dict[str, Any]] = []
    slices: list[dict[str, Any]] = []
    unknown: dict[tuple[str, str], str] = {}

    def read(ref: ObjectRef) -> Resource:
        path = api_path(ref)
        if path is None:
            return Resource(ref, "not looked up", None)
        try:
            obj = json.loads(client.get(path))
        except ApiError as exc:
            if exc.status == 404:
                return Resource(ref, "missing", False)
            if exc.status == 403:
                return Resource(ref, "you may not read it", None)
            return Resource(ref, f"unknown: {exc.message}", None)
        if ref.kind == "Secret":  # never carried further than its name
            return Resource(ref, "exists", None)
        if ref.kind == "Service":
            services.append(obj)
            try:
                owned = client.get(
                    f"/apis/discovery.k8s.io/v1/namespaces/{ref.namespace}/endpointslices",
                    {"labelSelector": f"kubernetes.io/service-name={ref.name}"},
                )
                slices.extend(json.loads(owned).get("items") or [])
            except ApiError as exc:
                unknown[(ref.namespace, ref.name)] = exc.message
        status, healthy, details = status_of(ref.kind, obj)
        pods: tuple[Resource, ...] = ()
        selector = _selector(obj) if ref.kind in _WORKLOADS else None
        if selector:
            try:
                listed = client.get(
                    f"/api/v1/namespaces/{ref.namespace}/pods", {"labelSelector": selector}
                )
                pods = pod_rows(json.loads(listed).get("items") or [])
            except ApiError as exc:
                details += (f"its Pods: {exc.message}",)
        return Resource(ref, status, healthy, details, pods)

    with ThreadPoolExecutor(_READS_AT_ONCE, thread_name_prefix="resources") as pool:
        found = list(pool.map(read, refs))
    key = _by_name
    return LiveApp(found, sorted(services, key=key), sorted(slices, key=key), unknown)


def _by_name(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))
