"""Loading Services and EndpointSlices from files and directories of manifests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nftproxy.model import Endpoint, Protocol, Service, ServiceName, ServicePort, SlicePort
from nftproxy.sources.manifests import Manifests, ReadLimits, load_paths

# What `kubectl get svc,endpointslices -A -o yaml` prints, trimmed to a handful of objects
# but keeping the noise (uid, managedFields, last-applied annotations, timestamps).
KUBECTL_DUMP = """\
apiVersion: v1
items:
- apiVersion: v1
  kind: Service
  metadata:
    creationTimestamp: "2024-05-02T10:11:12Z"
    labels:
      component: apiserver
      provider: kubernetes
    name: kubernetes
    namespace: default
    resourceVersion: "198"
    uid: 6c0f0d2e-6d7a-4a3c-9a55-0b0c1f2e3d4a
  spec:
    clusterIP: 10.96.0.1
    clusterIPs:
    - 10.96.0.1
    internalTrafficPolicy: Cluster
    ipFamilies:
    - IPv4
    ipFamilyPolicy: SingleStack
    ports:
    - name: https
      port: 443
      protocol: TCP
      targetPort: 6443
    sessionAffinity: None
    type: ClusterIP
  status:
    loadBalancer: {}
- apiVersion: v1
  kind: Service
  metadata:
    annotations:
      kubectl.kubernetes.io/last-applied-configuration: |
        {"apiVersion":"v1","kind":"Service","metadata":{"annotations":{},"name":"web","namespace":"shop"},"spec":{"ports":[{"name":"http","port":80,"targetPort":"http"}],"selector":{"app":"web"},"type":"NodePort"}}
    creationTimestamp: "2024-05-03T08:00:00Z"
    managedFields:
    - apiVersion: v1
      fieldsType: FieldsV1
      fieldsV1:
        f:spec:
          f:ports:
            .: {}
            k:{"port":80,"protocol":"TCP"}:
              .: {}
              f:name: {}
      manager: kubectl-client-side-apply
      operation: Update
      time: "2024-05-03T08:00:00Z"
    name: web
    namespace: shop
    resourceVersion: "4521"
    uid: 1a2b3c4d-0000-4000-8000-000000000001
  spec:
    clusterIP: 10.96.12.34
    clusterIPs:
    - 10.96.12.34
    externalTrafficPolicy: Cluster
    internalTrafficPolicy: Cluster
    ipFamilies:
    - IPv4
    ipFamilyPolicy: SingleStack
    ports:
    - name: http
      nodePort: 30080
      port: 80
      protocol: TCP
      targetPort: http
    selector:
      app: web
    sessionAffinity: None
    type: NodePort
  status:
    loadBalancer: {}
- apiVersion: v1
  kind: Service
  metadata:
    creationTimestamp: "2024-05-03T08:05:00Z"
    name: frontend
    namespace: shop
    resourceVersion: "4788"
    uid: 1a2b3c4d-0000-4000-8000-000000000002
  spec:
    allocateLoadBalancerNodePorts: true
    clusterIP: 10.96.40.2
    clusterIPs:
    - 10.96.40.2
    externalTrafficPolicy: Local
    healthCheckNodePort: 31999
    internalTrafficPolicy: Cluster
    ipFamilies:
    - IPv4
    ipFamilyPolicy: SingleStack
    loadBalancerSourceRanges:
    - 198.51.100.0/24
    - 203.0.113.0/24
    ports:
    - name: http
      nodePort: 31080
      port: 80
      protocol: TCP
      targetPort: 8080
    - name: https
      nodePort: 31443
      port: 443
      protocol: TCP
      targetPort: 8443
    selector:
      app: frontend
    sessionAffinity: None
    type: LoadBalancer
  status:
    loadBalancer:
      ingress:
      - ip: 192.0.2.50
        ipMode: VIP
      - hostname: frontend.lb.example.com
- apiVersion: v1
  kind: Service
  metadata:
    creationTimestamp: "2024-05-03T08:06:00Z"
    name: db
    namespace: shop
    resourceVersion: "4790"
    uid: 1a2b3c4d-0000-4000-8000-000000000003
  spec:
    clusterIP: None
    clusterIPs:
    - None
    internalTrafficPolicy: Cluster
    ipFamilies:
    - IPv4
    ipFamilyPolicy: SingleStack
    ports:
    - name: postgres
      port: 5432
      protocol: TCP
      targetPort: 5432
    selector:
      app: db
    sessionAffinity: None
    type: ClusterIP
  status:
    loadBalancer: {}
- apiVersion: v1
  kind: Service
  metadata:
    creationTimestamp: "2024-05-03T08:07:00Z"
    name: search
    namespace: shop
    resourceVersion: "4791"
    uid: 1a2b3c4d-0000-4000-8000-000000000004
  spec:
    externalName: search.example.com
    sessionAffinity: None
    type: ExternalName
  status:
    loadBalancer: {}
- apiVersion: v1
  kind: Service
  metadata:
    creationTimestamp: "2024-05-03T08:08:00Z"
    name: api
    namespace: shop
    resourceVersion: "4800"
    uid: 1a2b3c4d-0000-4000-8000-000000000005
  spec:
    clusterIP: 10.96.50.5
    clusterIPs:
    - 10.96.50.5
    - fd00:10:96::5
    internalTrafficPolicy: Cluster
    ipFamilies:
    - IPv4
    - IPv6
    ipFamilyPolicy: RequireDualStack
    ports:
    - name: grpc
      port: 9000
      protocol: TCP
      targetPort: 9000
    selector:
      app: api
    sessionAffinity: ClientIP
    sessionAffinityConfig:
      clientIP:
        timeoutSeconds: 600
    type: ClusterIP
  status:
    loadBalancer: {}
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses:
    - 172.18.0.2
    conditions:
      ready: true
  kind: EndpointSlice
  metadata:
    creationTimestamp: "2024-05-02T10:11:13Z"
    generation: 1
    labels:
      kubernetes.io/service-name: kubernetes
    name: kubernetes
    namespace: default
    resourceVersion: "200"
    uid: 5d6e7f80-0000-4000-8000-00000000000a
  ports:
  - name: https
    port: 6443
    protocol: TCP
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses:
    - 10.244.1.7
    conditions:
      ready: true
      serving: true
      terminating: false
    nodeName: node-a
    targetRef:
      kind: Pod
      name: web-7c9d8b6f5-abcde
      namespace: shop
      uid: 9f8e7d6c-0000-4000-8000-000000000001
    zone: zone-a
  - addresses:
    - 10.244.2.9
    conditions:
      ready: false
      serving: true
      terminating: true
    nodeName: node-b
    targetRef:
      kind: Pod
      name: web-7c9d8b6f5-fghij
      namespace: shop
      uid: 9f8e7d6c-0000-4000-8000-000000000002
    zone: zone-b
  kind: EndpointSlice
  metadata:
    annotations:
      endpoints.kubernetes.io/last-change-trigger-time: "2024-05-03T08:10:00Z"
    creationTimestamp: "2024-05-03T08:00:01Z"
    generateName: web-
    generation: 4
    labels:
      endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
      kubernetes.io/service-name: web
    name: web-x7k2p
    namespace: shop
    ownerReferences:
    - apiVersion: v1
      blockOwnerDeletion: true
      controller: true
      kind: Service
      name: web
      uid: 1a2b3c4d-0000-4000-8000-000000000001
    resourceVersion: "5120"
    uid: 5d6e7f80-0000-4000-8000-00000000000b
  ports:
  - name: http
    port: 8080
    protocol: TCP
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses:
    - 10.244.1.20
    conditions:
      ready: true
      serving: true
      terminating: false
    hints:
      forZones:
      - name: zone-a
    nodeName: node-a
    zone: zone-a
  kind: EndpointSlice
  metadata:
    generateName: frontend-
    labels:
      endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
      kubernetes.io/service-name: frontend
    name: frontend-q8w4r
    namespace: shop
    resourceVersion: "5200"
    uid: 5d6e7f80-0000-4000-8000-00000000000c
  ports:
  - name: https
    port: 8443
    protocol: TCP
  - name: http
    port: 8080
    protocol: TCP
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses:
    - 10.244.3.3
    conditions:
      ready: true
      serving: true
      terminating: false
    hostname: db-0
    nodeName: node-c
  kind: EndpointSlice
  metadata:
    labels:
      endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
      kubernetes.io/service-name: db
      service.kubernetes.io/headless: ""
    name: db-m2n3b
    namespace: shop
    resourceVersion: "5300"
    uid: 5d6e7f80-0000-4000-8000-00000000000d
  ports:
  - name: postgres
    port: 5432
    protocol: TCP
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses:
    - 10.244.1.30
    conditions:
      ready: true
      serving: true
      terminating: false
    nodeName: node-a
  kind: EndpointSlice
  metadata:
    labels:
      endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
      kubernetes.io/service-name: api
    name: api-4v9zt
    namespace: shop
    resourceVersion: "5400"
    uid: 5d6e7f80-0000-4000-8000-00000000000e
  ports:
  - name: grpc
    port: 9000
    protocol: TCP
- addressType: IPv6
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses:
    - fd00:10:244:1::1e
    conditions:
      ready: true
      serving: true
      terminating: false
    nodeName: node-a
  kind: EndpointSlice
  metadata:
    labels:
      endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
      kubernetes.io/service-name: api
    name: api-8h6ds
    namespace: shop
    resourceVersion: "5401"
    uid: 5d6e7f80-0000-4000-8000-00000000000f
  ports:
  - name: grpc
    port: 9000
    protocol: TCP
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints: null
  kind: EndpointSlice
  metadata:
    labels:
      endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
      kubernetes.io/service-name: idle
    name: idle-p0p0p
    namespace: shop
    resourceVersion: "5500"
    uid: 5d6e7f80-0000-4000-8000-000000000010
  ports: null
kind: List
metadata:
  resourceVersion: ""
"""

SERVICE_TEMPLATE = """\
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  clusterIP: {ip}
  ports:
  - name: http
    port: {port}
"""

POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: default
spec:
  containers:
  - name: c
    image: busybox
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def a_service(name: str = "web", ip: str = "10.96.0.10", port: int | str = 80) -> str:
    return SERVICE_TEMPLATE.format(name=name, ip=ip, port=port)


def only_error(result: Manifests) -> str:
    assert len(result.errors) == 1, [str(e) for e in result.errors]
    return str(result.errors[0])


# --- The kubectl dump ------------------------------------------------------------------------


@pytest.fixture
def dump(tmp_path: Path) -> Manifests:
    return load_paths([write(tmp_path / "cluster.yaml", KUBECTL_DUMP)])


def test_a_kubectl_dump_loads_every_proxied_service(dump: Manifests) -> None:
    assert dump.errors == []
    assert set(dump.services) == {
        ServiceName("default", "kubernetes"),
        ServiceName("shop", "web"),
        ServiceName("shop", "frontend"),
        ServiceName("shop", "api"),
    }


def test_a_kubectl_dump_skips_headless_and_external_name_services(
    dump: Manifests, tmp_path: Path
) -> None:
    source = str(tmp_path / "cluster.yaml")
    described = {what: why for what, why in dump.skipped}
    assert set(described) == {f"{source}: Service shop/db", f"{source}: Service shop/search"}
    assert "headless" in described[f"{source}: Service shop/db"]
    assert "ExternalName" in described[f"{source}: Service shop/search"]


def test_a_kubectl_dump_keeps_node_ports_and_cluster_ips(dump: Manifests) -> None:
    web = dump.services[ServiceName("shop", "web")]
    assert web.cluster_ips == ("10.96.12.34",)
    assert web.ports == (ServicePort("http", Protocol.TCP, 80, 30080),)
    assert not web.external_policy_local


def test_a_kubectl_dump_keeps_load_balancer_status_and_policy(dump: Manifests) -> None:
    frontend = dump.services[ServiceName("shop", "frontend")]
    assert frontend.load_balancer_ips == ("192.0.2.50",)
    assert frontend.load_balancer_source_ranges == ("198.51.100.0/24", "203.0.113.0/24")
    assert frontend.external_policy_local
    assert frontend.health_check_node_port == 31999
    assert [p.node_port for p in frontend.ports] == [31080, 31443]


def test_a_kubectl_dump_keeps_dual_stack_families_and_affinity(dump: Manifests) -> None:
    api = dump.services[ServiceName("shop", "api")]
    assert api.cluster_ips == ("10.96.50.5", "fd00:10:96::5")
    assert api.families == (4, 6)
    assert api.affinity_timeout == 600


def test_a_kubectl_dump_loads_every_ip_slice_including_empty_ones(dump: Manifests) -> None:
    assert set(dump.slices) == {
        ("default", "kubernetes"),
        ("shop", "web-x7k2p"),
        ("shop", "frontend-q8w4r"),
        ("shop", "db-m2n3b"),
        ("shop", "api-4v9zt"),
        ("shop", "api-8h6ds"),
        ("shop", "idle-p0p0p"),
    }
    assert dump.slices["shop", "idle-p0p0p"].endpoints == ()


def test_a_kubectl_dump_keeps_endpoint_conditions_and_hints(dump: Manifests) -> None:
    web = dump.slices["shop", "web-x7k2p"]
    assert web.ports == (SlicePort("http", Protocol.TCP, 8080),)
    assert web.endpoints == (
        Endpoint("10.244.1.7", "node-a", "zone-a"),
        Endpoint("10.244.2.9", "node-b", "zone-b", ready=False, serving=True, terminating=True),
    )
    frontend = dump.slices["shop", "frontend-q8w4r"].endpoints[0]
    assert frontend.zone_hints == frozenset({"zone-a"})
    assert frontend.node_hints is None


def test_a_kubectl_dump_splits_dual_stack_endpoints_by_family(dump: Manifests) -> None:
    v4, v6 = dump.slices["shop", "api-4v9zt"], dump.slices["shop", "api-8h6ds"]
    assert (v4.family, v6.family) == (4, 6)
    assert v4.service == v6.service == ServiceName("shop", "api")
    assert v6.endpoints[0].ip == "fd00:10:244:1::1e"


def test_the_same_dump_as_json_gives_the_same_result(tmp_path: Path, dump: Manifests) -> None:
    as_json = json.dumps(yaml.safe_load(KUBECTL_DUMP), default=str)
    result = load_paths([write(tmp_path / "cluster.json", as_json)])
    assert result.services == dump.services
    assert result.slices == dump.slices


# --- Document shapes ------------------------------------------------------------------------


def test_multi_document_yaml_loads_every_document_and_skips_empty_ones(tmp_path: Path) -> None:
    text = (
        "---\n"
        + a_service("a")
        + "---\n---\n# only a comment\n---\n"
        + a_service("b", ip="10.96.0.11")
    )
    result = load_paths([write(tmp_path / "svc.yaml", text)])
    assert result.errors == []
    assert set(result.services) == {ServiceName("default", "a"), ServiceName("default", "b")}


def test_typed_lists_supply_kind_and_api_version_to_their_items(tmp_path: Path) -> None:
    text = """\
apiVersion: discovery.k8s.io/v1
kind: EndpointSliceList
items:
- metadata:
    name: web-1
    namespace: default
    labels: {kubernetes.io/service-name: web}
  addressType: IPv4
  endpoints: [{addresses: [10.0.0.1]}]
  ports: [{port: 80}]
---
apiVersion: v1
kind: ServiceList
items:
- metadata: {name: web, namespace: default}
  spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
"""
    result = load_paths([write(tmp_path / "lists.yaml", text)])
    assert result.errors == []
    assert ServiceName("default", "web") in result.services
    assert ("default", "web-1") in result.slices


def test_a_json_file_may_hold_a_single_object(tmp_path: Path) -> None:
    obj = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]},
    }
    result = load_paths([write(tmp_path / "svc.json", json.dumps(obj))])
    assert list(result.services) == [ServiceName("default", "web")]


def test_objects_of_other_kinds_are_counted_as_ignored(tmp_path: Path) -> None:
    text = "\n---\n".join(
        [
            POD,
            POD,
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {}",
            "apiVersion: v1\nkind: Endpoints\nmetadata: {name: web}\nsubsets: []",
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: k}\n",
            a_service(),
        ]
    )
    result = load_paths([write(tmp_path / "mixed.yaml", text)])
    assert result.errors == []
    assert result.ignored == {"Pod": 2, "ConfigMap": 1, "Endpoints": 1, "Service": 1}
    assert list(result.services) == [ServiceName("default", "web")]


def test_fqdn_slices_are_skipped_and_reported(tmp_path: Path) -> None:
    text = """\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: ext-1
  namespace: default
  labels: {kubernetes.io/service-name: ext}
addressType: FQDN
endpoints: [{addresses: [db.example.com]}]
ports: [{port: 5432}]
"""
    result = load_paths([write(tmp_path / "fqdn.yaml", text)])
    assert result.slices == {}
    assert result.errors == []
    assert len(result.skipped) == 1
    what, why = result.skipped[0]
    assert what.endswith("EndpointSlice default/ext-1")
    assert "FQDN" in why


def test_the_service_proxy_name_selects_labelled_services(tmp_path: Path) -> None:
    labelled = a_service("mine").replace(
        "  namespace: default\n",
        "  namespace: default\n  labels:\n    service.kubernetes.io/service-proxy-name: nft\n",
    )
    path = write(tmp_path / "svc.yaml", labelled)
    assert load_paths([path]).services == {}
    assert list(load_paths([path], service_proxy_name="nft").services) == [
        ServiceName("default", "mine")
    ]


# --- Directories ----------------------------------------------------------------------------


def test_directories_are_read_recursively_skipping_hidden_and_foreign_files(
    tmp_path: Path,
) -> None:
    write(tmp_path / "a.yaml", a_service("a"))
    write(tmp_path / "nested" / "deeper" / "b.yml", a_service("b", ip="10.96.0.11"))
    write(
        tmp_path / "nested" / "c.json",
        json.dumps({"apiVersion": "v1", "kind": "List", "items": []}),
    )
    write(tmp_path / ".hidden.yaml", a_service("hidden", ip="10.96.0.12"))
    write(tmp_path / "..data" / "d.yaml", a_service("configmap-shadow", ip="10.96.0.13"))
    write(tmp_path / "notes.txt", "not: [valid")
    result = load_paths([tmp_path])
    assert result.errors == []
    assert set(result.services) == {ServiceName("default", "a"), ServiceName("default", "b")}


def test_a_later_definition_is_rejected_as_a_duplicate_naming_both_sources(
    tmp_path: Path,
) -> None:
    first = write(tmp_path / "1-first.yaml", a_service("web", port=80))
    second = write(tmp_path / "2-second.yaml", a_service("api") + "---\n" + a_service("web"))
    result = load_paths([tmp_path])
    assert [p.port for p in result.services[ServiceName("default", "web")].ports] == [80]
    assert only_error(result) == (
        f"{second}: Service default/web: duplicate: document 2 defines it again after "
        f"{first}: document 1, which is used"
    )


def test_a_later_invalid_definition_is_reported_and_the_earlier_valid_one_stays(
    tmp_path: Path,
) -> None:
    write(tmp_path / "1-first.yaml", a_service("web", port=80))
    write(tmp_path / "2-second.yaml", a_service("web", port=0))
    result = load_paths([tmp_path])
    assert [p.port for p in result.services[ServiceName("default", "web")].ports] == [80]
    assert "2-second.yaml: Service default/web: spec.ports[0].port" in only_error(result)


def test_a_later_invalid_document_in_the_same_file_keeps_the_earlier_valid_slice(
    tmp_path: Path,
) -> None:
    slice_yaml = (
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
        "metadata: {name: web-1, namespace: ns, labels: {kubernetes.io/service-name: web}}\n"
        "addressType: IPv4\nendpoints: [{addresses: [ADDRESS]}]\n"
    )
    text = (
        slice_yaml.replace("ADDRESS", "10.0.0.1")
        + "---\n"
        + slice_yaml.replace("ADDRESS", "'fd00::1'")
    )
    path = write(tmp_path / "slices.yaml", text)
    result = load_paths([path])
    assert [e.ip for e in result.slices["ns", "web-1"].endpoints] == ["10.0.0.1"]
    assert only_error(result).startswith(f"{path}: EndpointSlice ns/web-1: endpoints[0]")


def test_a_later_definition_for_another_proxy_is_a_duplicate_too(
    tmp_path: Path,
) -> None:
    labelled = a_service("web").replace(
        "  namespace: default\n",
        "  namespace: default\n  labels:\n    service.kubernetes.io/service-proxy-name: other\n",
    )
    write(tmp_path / "1-first.yaml", a_service("web"))
    write(tmp_path / "2-second.yaml", labelled)
    result = load_paths([tmp_path])
    assert set(result.services) == {ServiceName("default", "web")}
    assert "2-second.yaml: Service default/web: duplicate" in only_error(result)


def test_several_paths_are_loaded_in_the_order_given(tmp_path: Path) -> None:
    first = write(tmp_path / "x" / "svc.yaml", a_service("web", port=80))
    second = write(tmp_path / "y" / "svc.yaml", a_service("web", port=81))
    result = load_paths([second, str(first)])
    assert result.services[ServiceName("default", "web")].ports[0].port == 81
    assert only_error(result).startswith(f"{first}: Service default/web: duplicate")


# --- Errors ---------------------------------------------------------------------------------


def test_an_invalid_service_names_file_kind_object_and_field(tmp_path: Path) -> None:
    text = a_service("good") + "---\n" + a_service("bad", ip="10.96.0.11", port=70000)
    path = write(tmp_path / "services.yaml", text)
    result = load_paths([path])
    assert only_error(result) == (
        f"{path}: Service default/bad: spec.ports[0].port: 70000 is out of range 1-65535"
    )
    assert list(result.services) == [ServiceName("default", "good")]


@pytest.mark.parametrize(
    ("spec_yaml", "field", "message"),
    [
        (
            "ports: [{port: 80, nodePort: 70000}]\n  type: NodePort",
            "spec.ports[0].nodePort",
            "70000",
        ),
        ("ports: [{name: x}]", "spec.ports[0].port", "is required"),
        ("ports: [{port: 80, protocol: tcp}]", "spec.ports[0].protocol", '"tcp"'),
        ("ports: [{name: a, port: 80}, {name: a, port: 81}]", "spec.ports[1].name", "duplicate"),
        ("ports: [{name: a, port: 80}, {port: 81}]", "spec.ports[1].name", "is required"),
        ("ports: [{name: a, port: 80}, {name: b, port: 80}]", "spec.ports[1]", "duplicate port"),
        ("ports: [{port: 80}]\n  clusterIP: 10.96.0.999", "spec.clusterIP", "not a valid IP"),
        ("ports: [{port: 80}]\n  clusterIP: '::ffff:10.0.0.1'", "spec.clusterIP", "IPv4-mapped"),
        ("ports: [{port: 80}]\n  externalIPs: ['2001:db8::1']", "spec.externalIPs[0]", "IPv6"),
        (
            "ports: [{port: 80}]\n  loadBalancerSourceRanges: [nope]",
            "spec.loadBalancerSourceRanges[0]",
            "CIDR",
        ),
        ("ports: [{port: 80}]\n  type: Special", "spec.type", '"Special"'),
        (
            "ports: [{port: 80}]\n  sessionAffinity: ClientIP\n"
            "  sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}",
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            "0 is out of range",
        ),
        ("ports: [{port: '80'}]", "spec.ports[0].port", "Expected `int`, got `str`"),
    ],
)
def test_each_invalid_service_field_is_reported_and_the_rest_of_the_file_loads(
    tmp_path: Path, spec_yaml: str, field: str, message: str
) -> None:
    bad = (
        "apiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: ns}\n"
        f"spec:\n  {spec_yaml}\n"
    )
    path = write(tmp_path / "services.yaml", a_service("good") + "---\n" + bad)
    result = load_paths([path])
    error = only_error(result)
    assert error.startswith(f"{path}: Service ns/bad: {field}: ")
    assert message in error
    assert list(result.services) == [ServiceName("default", "good")]


def test_absurdly_large_services_are_rejected(tmp_path: Path) -> None:
    ports = [{"name": f"p{i}", "port": i + 1} for i in range(1001)]
    bad = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "huge"},
        "spec": {"ports": ports},
    }
    result = load_paths([write(tmp_path / "huge.json", json.dumps(bad))])
    assert "Service default/huge: spec.ports: absurd size: 1001 entries" in only_error(result)


@pytest.mark.parametrize(
    ("slice_yaml", "field", "message"),
    [
        (
            "addressType: IPv4\nendpoints: [{addresses: [10.0.0.300]}]",
            "endpoints[0].addresses[0]",
            "not a valid IP",
        ),
        (
            "addressType: IPv6\nendpoints: [{addresses: [10.0.0.1]}]",
            "endpoints[0].addresses[0]",
            "is IPv4",
        ),
        ("addressType: IPv4\nendpoints: [{addresses: []}]", "endpoints[0].addresses", "empty"),
        ("addressType: Other\nendpoints: []", "addressType", '"Other"'),
        ("addressType: IPv4\nports: [{port: 0}]", "ports[0].port", "0 is out of range"),
    ],
)
def test_each_invalid_slice_field_is_reported_and_the_rest_of_the_file_loads(
    tmp_path: Path, slice_yaml: str, field: str, message: str
) -> None:
    bad = (
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
        "metadata: {name: web-1, namespace: ns, labels: {kubernetes.io/service-name: web}}\n"
        + slice_yaml
        + "\n"
    )
    path = write(tmp_path / "slices.yaml", bad + "---\n" + a_service())
    result = load_paths([path])
    error = only_error(result)
    assert error.startswith(f"{path}: EndpointSlice ns/web-1: {field}: ")
    assert message in error
    assert list(result.services) == [ServiceName("default", "web")]


def test_a_bad_endpoint_is_reported_and_the_slice_keeps_the_others(tmp_path: Path) -> None:
    addresses = [f"10.0.0.{i}" for i in range(1, 11)]
    addresses[4] = "10.0.0.999"
    endpoints = ", ".join(f"{{addresses: [{a}]}}" for a in addresses)
    text = (
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
        "metadata: {name: web-1, namespace: ns, labels: {kubernetes.io/service-name: web}}\n"
        f"addressType: IPv4\nendpoints: [{endpoints}]\n"
    )
    path = write(tmp_path / "slices.yaml", text)
    result = load_paths([path])
    assert only_error(result) == (
        f'{path}: EndpointSlice ns/web-1: endpoints[4].addresses[0]: "10.0.0.999" is not a valid'
        " IP address"
    )
    kept = [e.ip for e in result.slices["ns", "web-1"].endpoints]
    assert kept == [a for a in addresses if a != "10.0.0.999"]


def test_absurdly_large_slices_are_rejected(tmp_path: Path) -> None:
    endpoints = [{"addresses": [f"10.0.{i // 250}.{i % 250}"]} for i in range(1001)]
    bad = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "big", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
    }
    result = load_paths([write(tmp_path / "big.json", json.dumps(bad))])
    assert "EndpointSlice default/big: endpoints: absurd size: 1001" in only_error(result)


def test_a_service_without_a_name_is_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path / "s.yaml", "apiVersion: v1\nkind: Service\nspec: {ports: [{port: 80}]}\n"
    )
    assert only_error(load_paths([path])) == (
        f"{path}: Service default/<unnamed>: metadata.name: is required"
    )


def test_an_unparsable_yaml_file_is_one_error_and_other_files_still_load(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", a_service())
    bad = write(tmp_path / "b.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: [oops\n")
    result = load_paths([tmp_path])
    error = only_error(result)
    assert error.startswith(f"{bad}: line ")
    assert "invalid YAML" in error
    assert "\n" not in error
    assert result.errors[0].kind == "file"
    assert list(result.services) == [ServiceName("default", "web")]


def test_documents_before_a_yaml_syntax_error_still_load(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", a_service() + "---\nkey: [unclosed\n")
    result = load_paths([path])
    assert "invalid YAML" in only_error(result)
    assert list(result.services) == [ServiceName("default", "web")]


def test_an_unparsable_json_file_is_one_error(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", '{"kind": "Service",')
    error = only_error(load_paths([path]))
    assert error.startswith(f"{path}: invalid JSON: ")


def test_a_document_that_is_not_a_mapping_names_file_and_document(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", a_service() + "---\n- just\n- a list\n")
    result = load_paths([path])
    assert only_error(result) == f"{path}: document 2: expected a mapping, got a list"
    assert list(result.services) == [ServiceName("default", "web")]


def test_a_list_item_that_is_not_a_mapping_names_its_index(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", "apiVersion: v1\nkind: List\nitems:\n- 42\n")
    assert (
        only_error(load_paths([path]))
        == f"{path}: document 1.items[0]: expected a mapping, got int"
    )


def test_an_object_without_a_kind_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", "metadata: {name: x}\n")
    assert only_error(load_paths([path])) == f"{path}: document 1: kind is missing"


def test_an_unsupported_endpoint_slice_version_is_reported(tmp_path: Path) -> None:
    text = (
        "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\n"
        "metadata: {name: s, namespace: ns}\n"
    )
    path = write(tmp_path / "a.yaml", text)
    assert only_error(load_paths([path])) == (
        f'{path}: EndpointSlice ns/s: apiVersion: "discovery.k8s.io/v1beta1" is not supported; '
        "use discovery.k8s.io/v1"
    )


def test_a_missing_path_is_reported_without_stopping_the_others(tmp_path: Path) -> None:
    good = write(tmp_path / "a.yaml", a_service())
    missing = tmp_path / "missing.yaml"
    result = load_paths([missing, good])
    assert only_error(result) == f"{missing}: no such file or directory"
    assert list(result.services) == [ServiceName("default", "web")]


def test_an_explicitly_named_file_is_read_whatever_its_suffix(tmp_path: Path) -> None:
    path = write(tmp_path / "services.txt", a_service())
    assert list(load_paths([path]).services) == [ServiceName("default", "web")]


def test_loaded_services_are_model_rows(tmp_path: Path) -> None:
    result = load_paths([write(tmp_path / "a.yaml", a_service())])
    assert all(isinstance(s, Service) for s in result.services.values())


def test_garbage_collection_is_restored_after_loading(tmp_path: Path) -> None:
    import gc

    assert gc.isenabled()
    load_paths([write(tmp_path / "a.yaml", "key: [unclosed\n")])
    assert gc.isenabled()


# --- Files that are not what they seem --------------------------------------------------------

# Loads in a child process, so that a regression that blocks (a FIFO) or reads without end
# (/dev/zero) fails the test instead of hanging it or exhausting the machine's memory.
LOAD_IN_CHILD = """\
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from nftproxy.sources.manifests import load_paths
result = load_paths(sys.argv[1:])
print(json.dumps({
    "errors": [str(e) for e in result.errors],
    "warnings": result.warnings,
    "services": sorted(f"{s.namespace}/{s.name}" for s in result.services),
}))
"""


def load_in_child(*paths: Path) -> dict[str, Any]:
    try:
        done = subprocess.run(
            [sys.executable, "-c", LOAD_IN_CHILD, *map(str, paths)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"loading {[str(p) for p in paths]} did not finish within 60 s")
    loaded: dict[str, Any] = json.loads(done.stdout)
    return loaded


def test_a_fifo_in_a_directory_is_skipped_with_a_warning_and_one_named_is_an_error(
    tmp_path: Path,
) -> None:
    write(tmp_path / "a.yaml", a_service())
    fifo = tmp_path / "x.yaml"
    os.mkfifo(fifo)
    problem = f"{fifo}: is a FIFO (named pipe); only regular files are read"
    loaded = load_in_child(tmp_path)
    assert loaded["errors"] == []
    assert loaded["warnings"] == [f"{problem}; skipped"]
    assert loaded["services"] == ["default/web"]
    named = load_in_child(tmp_path, fifo)
    assert named["errors"] == [problem]
    assert named["services"] == ["default/web"]


def test_a_symlink_to_a_device_is_an_error_and_is_not_read(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", a_service())
    (tmp_path / "x.yaml").symlink_to("/dev/zero")
    loaded = load_in_child(tmp_path, tmp_path / "x.yaml")
    error = (
        f"{tmp_path / 'x.yaml'}: is a character device (a symlink to /dev/zero); "
        "only regular files are read"
    )
    assert loaded["warnings"] == [f"{error}; skipped"]
    assert loaded["errors"] == [error]
    assert loaded["services"] == ["default/web"]


def test_a_directory_named_like_a_manifest_is_searched_not_read(tmp_path: Path) -> None:
    write(tmp_path / "dir.yaml" / "a.yaml", a_service())
    result = load_paths([tmp_path])
    assert result.errors == []
    assert list(result.services) == [ServiceName("default", "web")]


def test_symlinked_files_are_read_like_a_mounted_config_map(tmp_path: Path) -> None:
    # What the kubelet mounts for a ConfigMap: files are symlinks through ..data.
    write(tmp_path / "..2024_05_03_08_00_00.123" / "web.yaml", a_service())
    (tmp_path / "..data").symlink_to("..2024_05_03_08_00_00.123")
    (tmp_path / "web.yaml").symlink_to("..data/web.yaml")
    result = load_paths([tmp_path])
    assert result.errors == []
    assert list(result.services) == [ServiceName("default", "web")]


def test_dangling_and_looping_symlinks_are_errors_and_the_other_files_load(
    tmp_path: Path,
) -> None:
    write(tmp_path / "a.yaml", a_service())
    (tmp_path / "dangling.yaml").symlink_to("gone.yaml")
    (tmp_path / "loop.yaml").symlink_to("loop.yaml")
    # Named twice, in the directory and on its own: reported once.
    result = load_paths([tmp_path, tmp_path / "dangling.yaml"])
    assert [str(e) for e in result.errors] == [
        f"{tmp_path / 'dangling.yaml'}: is a dangling symlink to gone.yaml",
        f"{tmp_path / 'loop.yaml'}: is a symlink to loop.yaml, which loops",
    ]
    assert {e.kind for e in result.errors} == {"file"}
    assert list(result.services) == [ServiceName("default", "web")]


def test_a_file_larger_than_the_limit_is_an_error_naming_the_limit(tmp_path: Path) -> None:
    small = write(tmp_path / "a.yaml", a_service("a"))
    big = write(tmp_path / "b.yaml", a_service("b", ip="10.96.0.11") + "#" * 1000 + "\n")
    limits = ReadLimits(max_file_bytes=small.stat().st_size)
    result = load_paths([tmp_path], limits=limits)
    assert only_error(result) == (
        f"{big}: larger than the limit of {small.stat().st_size:,} bytes per file "
        f"({big.stat().st_size:,} bytes)"
    )
    assert list(result.services) == [ServiceName("default", "a")]


@pytest.mark.parametrize("value", [0, -1, True, 1.5])
def test_read_limits_must_be_positive_integers(value: Any) -> None:
    with pytest.raises(ValueError, match="max_file_bytes must be a positive integer"):
        ReadLimits(max_file_bytes=value)


# --- YAML that would crash, freeze or exhaust the reader ---------------------------------------


def a_list(*items: str) -> str:
    return "apiVersion: v1\nkind: List\nitems:\n" + "".join(
        "- " + item.strip().replace("\n", "\n  ") + "\n" for item in items
    )


def test_deep_block_nesting_is_an_error_for_its_file_and_other_files_load(
    tmp_path: Path,
) -> None:
    write(tmp_path / "a.yaml", a_service())
    deep = write(tmp_path / "x.yaml", "".join(" " * i + "a:\n" for i in range(1200)))
    result = load_paths([tmp_path])
    assert str(result.errors[0]) == (
        f"{deep}: document 1, line 101, column 101: nested more than 100 levels deep "
        "(the depth limit)"
    )
    assert all(e.source == str(deep) and e.kind == "file" for e in result.errors)
    assert list(result.services) == [ServiceName("default", "web")]


@pytest.mark.parametrize("depth", [1200, 10**6])
def test_deep_flow_nesting_is_an_error_for_its_file_and_other_files_load(
    tmp_path: Path, depth: int
) -> None:
    write(tmp_path / "a.yaml", a_service())
    deep = write(tmp_path / "x.yaml", "[" * depth + "]" * depth)
    # In a child: a recursive composer may overflow the C stack on this, not just raise.
    loaded = load_in_child(tmp_path)
    # libyaml may stop at its own nesting limit (1000) before this reader sees level 101.
    assert loaded["errors"]
    assert all(e.startswith(f"{deep}: ") for e in loaded["errors"])
    assert "nest" in loaded["errors"][0]
    assert loaded["services"] == ["default/web"]


def test_the_depth_limit_counts_the_depth_that_aliases_bring(tmp_path: Path) -> None:
    text = "deep: &deep [[[[[1]]]]]\ndeeper: [[[[[*deep]]]]]\n" + "---\n" + a_service()
    path = write(tmp_path / "a.yaml", text)
    result = load_paths([path], limits=ReadLimits(max_depth=10))
    assert only_error(result) == (
        f"{path}: document 1, line 2, column 14: alias *deep nests more than 10 levels deep "
        "(the depth limit)"
    )
    assert list(result.services) == [ServiceName("default", "web")]


def billion_laughs(levels: int = 7) -> str:
    """A List whose items are aliases of Lists of aliases ...: 911 bytes, 10**7 Services."""
    service = (
        "{apiVersion: v1, kind: Service, metadata: {name: lol}, "
        "spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}}"
    )
    lines = ["apiVersion: v1", "kind: List", f"lol0: &lol0 {service}"]
    for i in range(1, levels):
        aliases = ", ".join([f"*lol{i - 1}"] * 10)
        lines.append(f"lol{i}: &lol{i} {{apiVersion: v1, kind: List, items: [{aliases}]}}")
    lines.append("items: [" + ", ".join([f"*lol{levels - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_an_error_naming_the_file_and_other_files_load(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", a_service())
    bomb = write(tmp_path / "bomb.yaml", billion_laughs())
    loaded = load_in_child(tmp_path)
    size = bomb.stat().st_size
    assert len(loaded["errors"]) == 1
    assert loaded["errors"][0].startswith(f"{bomb}: document 1, line ")
    assert loaded["errors"][0].endswith(
        f": aliases would add more than 1,048,576 characters, the most allowed for a file of "
        f"{size:,} bytes"
    )
    assert loaded["services"] == ["default/web"]


def test_the_alias_allowance_grows_with_the_file_and_can_be_set(tmp_path: Path) -> None:
    path = write(tmp_path / "bomb.yaml", billion_laughs(levels=3))
    # Within the allowance: read whole (its thousand copies of one Service are duplicates).
    assert {e.message.split(":")[0] for e in load_paths([path]).errors} == {"duplicate"}
    assert "aliases would add more than 1,000 characters" in only_error(
        load_paths([path], limits=ReadLimits(alias_allowance=1000))
    )


def test_anchors_aliases_and_merge_keys_of_hand_written_manifests_still_work(
    tmp_path: Path,
) -> None:
    text = """\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: &meta {name: web, namespace: shop, labels: {app: web}}
  spec: &spec
    clusterIP: 10.96.0.10
    ports: &ports
    - {name: http, port: 80}
    - {name: https, port: 443}
- apiVersion: v1
  kind: Service
  metadata:
    <<: *meta
    name: api
  spec:
    <<: *spec
    clusterIP: 10.96.0.11
- apiVersion: v1
  kind: Service
  metadata: {<<: [{name: db, namespace: other}, *meta]}
  spec: {ports: *ports, clusterIP: 10.96.0.12}
"""
    result = load_paths([write(tmp_path / "shop.yaml", text)])
    assert result.errors == []
    assert set(result.services) == {
        ServiceName("other", "db"),
        ServiceName("shop", "api"),
        ServiceName("shop", "web"),
    }
    api = result.services[ServiceName("shop", "api")]
    assert api.cluster_ips == ("10.96.0.11",)
    assert [p.port for p in api.ports] == [80, 443]


def test_a_document_larger_than_the_limit_is_an_error_and_the_others_load(
    tmp_path: Path,
) -> None:
    big = a_service("big", ip="10.96.0.11") + "".join(f"  # {i}\n" for i in range(100))
    big = big.replace("  ports:", "  sessionAffinity: None\n" + " " * 2 + "ports:")
    text = a_service("a") + "---\n" + big + "padding: " + "x" * 600 + "\n---\n"
    text += a_service("c", ip="10.96.0.12")
    path = write(tmp_path / "a.yaml", text)
    result = load_paths([path], limits=ReadLimits(max_document_chars=500))
    error = only_error(result)
    assert error.startswith(f"{path}: document 2, line ")
    assert error.endswith(": the document is larger than the limit of 500 characters per document")
    assert set(result.services) == {ServiceName("default", "a"), ServiceName("default", "c")}


def test_the_document_limit_counts_aliases_expanded(tmp_path: Path) -> None:
    text = "a: &a [" + ", ".join(["xxxxxxxxxx"] * 20) + "]\nb: [*a, *a, *a, *a]\n"
    path = write(tmp_path / "a.yaml", text)
    error = only_error(load_paths([path], limits=ReadLimits(max_document_chars=1000)))
    assert error.endswith(
        ": the document is larger with its aliases expanded than the limit of 1,000 "
        "characters per document"
    )


def test_a_bad_item_of_a_list_is_an_error_and_the_other_items_load(tmp_path: Path) -> None:
    bad_date = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {day: 2024-13-45}"
    text = a_list(a_service("a"), bad_date, a_service("c", ip="10.96.0.12"))
    path = write(tmp_path / "list.yaml", text)
    result = load_paths([path])
    assert only_error(result) == (
        f"{path}: document 1.items[1], line 17, column 15: cannot read '2024-13-45' as "
        "timestamp: month must be in 1..12"
    )
    assert set(result.services) == {ServiceName("default", "a"), ServiceName("default", "c")}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("!!set {a, b}", "unsupported tag tag:yaml.org,2002:set"),
        ("!Ref name", "unsupported tag !Ref"),
        ("!!binary abc", "failed to decode base64 data: Incorrect padding"),
        ("{[a]: 1}", "a mapping or a list is used as a mapping key"),
        ("*nowhere", "alias *nowhere has no anchor &nowhere before it"),
        ("&loop [*loop]", "alias *loop is inside the node it refers to"),
        ("1" + ":59" * 20000, "a number of 60,001 characters"),
        ("{<<: [1, 2]}", "<< merges a mapping or a list of mappings, not a list"),
    ],
)
def test_yaml_that_cannot_be_json_data_rejects_only_its_list_item(
    tmp_path: Path, value: str, message: str
) -> None:
    bad = f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\ndata: {{x: {value}}}"
    path = write(tmp_path / "list.yaml", a_list(bad, a_service()))
    result = load_paths([path])
    error = only_error(result)
    assert error.startswith(f"{path}: document 1.items[0], line ")
    assert error.endswith(f": {message}")
    assert list(result.services) == [ServiceName("default", "web")]


def test_a_bad_value_outside_a_list_rejects_its_document_only(tmp_path: Path) -> None:
    text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, x: !Ref y}\n---\n" + a_service()
    path = write(tmp_path / "a.yaml", text)
    result = load_paths([path])
    assert only_error(result) == f"{path}: document 1, line 3, column 24: unsupported tag !Ref"
    assert list(result.services) == [ServiceName("default", "web")]


# --- JSON that would crash the reader ---------------------------------------------------------


def a_service_json(**annotations: str) -> str:
    obj = yaml.safe_load(a_service())
    obj["metadata"]["annotations"] = annotations
    return json.dumps(obj)


@pytest.mark.parametrize(
    "text",
    ["[" * 1200 + "]" * 1200, "[" * 10**6 + "]" * 10**6, '{"a": ' * 200 + "1" + "}" * 200],
)
def test_deeply_nested_json_is_an_error_for_its_file_and_other_files_load(
    tmp_path: Path, text: str
) -> None:
    write(tmp_path / "a.json", a_service_json())
    deep = write(tmp_path / "x.json", text)
    result = load_paths([tmp_path])
    assert only_error(result) == f"{deep}: nested more than 100 levels deep (the depth limit)"
    assert list(result.services) == [ServiceName("default", "web")]


@pytest.mark.parametrize("text", ["[" * 10**6, "]" * 10**6 + "[" * 10**6, '{"a": ' * 10**5])
def test_unbalanced_deep_json_is_an_error_for_its_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "x.json", text)
    assert only_error(load_paths([path])).startswith(f"{path}: invalid JSON: ")


def test_brackets_and_escapes_inside_json_strings_do_not_count_as_nesting(
    tmp_path: Path,
) -> None:
    tricky = '\\"[' * 300 + "{" * 300
    path = write(tmp_path / "a.json", a_service_json(note=tricky))
    result = load_paths([path])
    assert result.errors == []
    assert list(result.services) == [ServiceName("default", "web")]


def test_json_larger_than_the_document_limit_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", a_service_json(note="x" * 1000))
    assert only_error(load_paths([path], limits=ReadLimits(max_document_chars=1000))) == (
        f"{path}: larger than the limit of 1,000 characters per document"
    )


# --- Whatever a file holds --------------------------------------------------------------------

YAML_PIECES = [
    *("a", "kind", "items", "List", "Service", "EndpointSlice", "v1", "metadata", "name"),
    *(": ", "- ", "\n", "  ", "[", "]", "{", "}", ", ", "'", '"', "#", "? ", "---\n", "...\n"),
    *("&a ", "*a", "&b ", "*b", "<<: ", "!!str ", "!!set ", "!!binary ", "!x ", "|\n", ">\n"),
    *("0x1F", "1:30", "2024-13-45", "~", "yes", "1e3", ".nan", "\t", "%YAML 1.1\n", "\xe9"),
]

# Objects shaped like what load_paths looks for, with values of any type in every field.
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
kube_objects = st.fixed_dictionaries(
    {
        "apiVersion": st.sampled_from(["v1", "discovery.k8s.io/v1", "", "v2"]) | values,
        "kind": st.sampled_from(["Service", "EndpointSlice", "List", "ServiceList"]) | values,
        "metadata": st.fixed_dictionaries(
            {"name": st.sampled_from(["web", ""]) | values},
            optional={
                "namespace": values,
                "labels": st.dictionaries(
                    st.sampled_from(["kubernetes.io/service-name", "x"]), values
                ),
            },
        )
        | values,
    },
    optional={"spec": values, "items": st.lists(values, max_size=3), "endpoints": values},
)
file_contents = st.one_of(
    st.binary(max_size=2000),
    st.lists(st.sampled_from(YAML_PIECES), max_size=60).map("".join).map(str.encode),
    st.tuples(st.sampled_from(["[", "{a: ", "- ", '{"a": ', "&a [*a, "]), st.integers(0, 3000)).map(
        lambda piece_count: (piece_count[0] * piece_count[1]).encode()
    ),
    values.map(lambda v: json.dumps(v).encode()),
    kube_objects.map(lambda o: yaml.safe_dump(o).encode()),
    kube_objects.map(lambda o: json.dumps(o).encode()),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=file_contents, suffix=st.sampled_from([".yaml", ".json"]))
def test_no_file_content_makes_loading_raise_or_lose_the_other_files(
    content: bytes, suffix: str
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        good = write(Path(directory, "good.yaml"), a_service("good"))
        any_file = Path(directory, "x" + suffix)
        any_file.write_bytes(content)
        result = load_paths([directory])
    assert ServiceName("default", "good") in result.services
    for error in result.errors:
        assert error.source == str(any_file)
        assert str(error).startswith(f"{any_file}: ")
        # Every problem is one load_paths knows, not one its last-resort handler caught.
        assert "could not be loaded" not in str(error)
    assert good.name not in {e.source for e in result.errors}


def test_an_unexpected_failure_costs_only_its_own_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nftproxy.sources import manifests

    def fail(raw: Any, **kwargs: Any) -> Any:
        if raw.metadata.name == "bad":
            raise MemoryError("out of memory")
        return to_service(raw, **kwargs)

    to_service = manifests.to_service
    monkeypatch.setattr(manifests, "to_service", fail)
    text = a_service("bad") + "---\n" + a_service("good-1", ip="10.96.0.11")
    bad = write(tmp_path / "a.yaml", text)
    write(tmp_path / "b.yaml", a_service("good-2", ip="10.96.0.12"))
    result = load_paths([tmp_path])
    assert only_error(result) == (
        f"{bad}: document 1: could not be loaded: MemoryError: out of memory"
    )
    assert set(result.services) == {
        ServiceName("default", "good-1"),
        ServiceName("default", "good-2"),
    }


def test_service_cidrs_load_from_a_list_and_a_bad_one_is_named(tmp_path: Path) -> None:
    (tmp_path / "cidrs.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "List",
                "items": [
                    {
                        "apiVersion": "networking.k8s.io/v1",
                        "kind": "ServiceCIDR",
                        "metadata": {"name": "kubernetes"},
                        "spec": {"cidrs": ["10.96.0.0/16", "fd00:96::/112"]},
                    },
                    {
                        "apiVersion": "networking.k8s.io/v1",
                        "kind": "ServiceCIDR",
                        "metadata": {"name": "broken"},
                        "spec": {"cidrs": ["10.97.0.0/99"]},
                    },
                    # Another group's kind of that name is not ours.
                    {"apiVersion": "example.com/v1", "kind": "ServiceCIDR", "metadata": {}},
                ],
            }
        )
    )
    got = load_paths([tmp_path])
    assert list(got.service_cidrs) == ["kubernetes"]
    assert got.service_cidrs["kubernetes"].cidrs == ("10.96.0.0/16", "fd00:96::/112")
    (err,) = got.errors
    assert str(err) == (
        f"{tmp_path / 'cidrs.yaml'}: ServiceCIDR broken: spec.cidrs[0]: "
        '"10.97.0.0/99" is not a valid CIDR'
    )
    assert got.ignored == {"ServiceCIDR": 1}


def test_a_key_set_twice_in_one_mapping_rejects_the_document_as_kubectl_does(
    tmp_path: Path,
) -> None:
    # Two manifests concatenated without `---`: the second silently replaced the first.
    (tmp_path / "joined.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: x}\n"
        "spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n"
        "apiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: x}\n"
        "spec: {clusterIP: 10.96.0.2, ports: [{port: 80}]}\n"
        "---\n"
        "apiVersion: v1\nkind: Service\nmetadata: {name: c, namespace: x}\n"
        "spec: {clusterIP: 10.96.0.3, clusterIP: 10.96.0.4, ports: [{port: 80}]}\n"
        "---\n"
        "apiVersion: v1\nkind: Service\nmetadata: {name: d, namespace: x}\n"
        "spec: {clusterIP: 10.96.0.5, ports: [{port: 80}]}\n"
    )
    got = load_paths([tmp_path])
    assert list(got.services) == [ServiceName("x", "d")]
    messages = [str(e) for e in got.errors]
    assert len(messages) == 2, messages
    assert "document 1" in messages[0] and "key 'apiVersion' is set twice" in messages[0]
    assert "document 2" in messages[1] and "key 'clusterIP' is set twice" in messages[1]
