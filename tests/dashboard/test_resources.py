"""An app's objects as its release names them, and the status shown for each
(nftproxy.dashboard.resources); reading them live is in test_live.py."""

from __future__ import annotations

from nftproxy.dashboard.resources import ObjectRef, api_path, object_refs, status_of

MANIFEST = """\
---
# Source: web/templates/service.yaml
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  ports: [{port: 80, nodePort: 30080}]
---
# Source: web/templates/deployment.yaml
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: elsewhere
---
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: ConfigMap, metadata: {name: a}}
---
kind: Broken
metadata: [not, a, mapping]
---
"""


def test_the_objects_a_release_made_in_its_namespace_unless_named() -> None:
    refs, errors = object_refs(MANIFEST, "apps")
    assert refs == [
        ObjectRef("ConfigMap", "apps", "a"),
        ObjectRef("Deployment", "elsewhere", "web"),
        ObjectRef("Service", "apps", "web"),
    ]
    assert errors == []
    assert api_path(refs[1]) == "/apis/apps/v1/namespaces/elsewhere/deployments/web"
    assert api_path(ObjectRef("Widget", "apps", "w")) is None


def test_an_alias_bomb_in_a_manifest_is_refused_not_expanded() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(9)
    )
    refs, errors = object_refs(bomb, "apps")
    assert refs == [] and errors and "alias" in errors[0]


def test_statuses_say_what_a_user_can_act_on() -> None:
    deployment = {"spec": {"replicas": 3}, "status": {"readyReplicas": 1}}
    assert status_of("Deployment", deployment)[:2] == ("1/3 ready", False)
    assert status_of("Deployment", {"spec": {"replicas": 2}, "status": {}})[:2] == (
        "0/2 ready",
        False,
    )
    pod = {
        "spec": {"nodeName": "node-a", "containers": [{}, {}]},
        "status": {
            "phase": "Running",
            "podIP": "10.244.0.5",
            "containerStatuses": [{"ready": True, "restartCount": 2}, {"ready": True}],
        },
    }
    assert status_of("Pod", pod) == (
        "Running, 2/2 ready",
        True,
        ("node node-a", "IP 10.244.0.5", "2 restarts"),
    )
    svc = {
        "spec": {
            "type": "LoadBalancer",
            "clusterIPs": ["10.96.0.10"],
            "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}],
        },
        "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.50"}]}},
    }
    assert status_of("Service", svc) == (
        "LoadBalancer",
        None,
        ("ClusterIP 10.96.0.10", "80/TCP (NodePort 30080)", "LoadBalancer 192.0.2.50"),
    )
    ingress = {"spec": {"rules": [{"host": "web.example"}]}, "status": {}}
    assert status_of("Ingress", ingress)[2] == ("hosts web.example", "no address yet")


def test_a_name_the_api_server_would_refuse_is_not_looked_up() -> None:
    """A release's manifests are anyone's who may write Secrets in its namespace: a "/" in a
    name would reach a subresource (services/proxy) with the viewer's token, a "?" would add
    query parameters (a watch)."""
    for name in ("web/proxy/admin", "web?watch=1&timeoutSeconds=40", "..", "Web", "a" * 300):
        assert api_path(ObjectRef("Service", "apps", name)) is None, name
    assert api_path(ObjectRef("Service", "apps/x", "web")) is None
    assert (
        api_path(ObjectRef("Service", "apps", "web.v1"))
        == "/api/v1/namespaces/apps/services/web.v1"
    )
