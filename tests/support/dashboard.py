"""What the dashboard's tests deploy: test charts (some with a values schema) for a chart
repository on loopback, and what a release made read back from the cluster."""

from __future__ import annotations

import json
from pathlib import Path

from nftproxy.dashboard.helm import ApiServer, Credentials, Helm
from nftproxy.lab.apiserver import ControlPlane
from nftproxy.lab.charts import HttpChartRepo, write_chart

__all__ = [
    "CONFIGMAP",
    "CONFIGURABLE",
    "SCHEMA",
    "SETTINGS",
    "installed",
    "publish_test_charts",
    "settings",
]

CONFIGMAP = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-cm
data:
  a: "1"
"""


SCHEMA = {
    "type": "object",
    "required": ["replicas"],
    "properties": {
        "replicas": {"type": "integer", "minimum": 1, "maximum": 5},
        "color": {"enum": ["blue", "green"]},
    },
}
# The chart version the deploy tests deploy, as the deploy form names it.
CONFIGURABLE = {"repo": "main", "chart": "configurable", "version": "1.0.0"}
SETTINGS = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-settings
data:
  replicas: {{ .Values.replicas | quote }}
  color: {{ .Values.color | quote }}
"""


def publish_test_charts(served: HttpChartRepo, src: Path) -> None:
    """hello 0.1.0 and web 1.0.0; configurable 1.0.0 and 1.1.0 (a schema, a ConfigMap of
    its values); sneaky 1.0.0, whose description is markup."""
    served.publish(
        [
            write_chart(src, "hello", "0.1.0", templates={"cm.yaml": CONFIGMAP}),
            write_chart(src / "w", "web", "1.0.0"),
        ]
    )
    served.publish(
        [
            write_chart(
                src / "c",
                "configurable",
                "1.0.0",
                values="replicas: 2\ncolor: blue\n",
                schema=json.dumps(SCHEMA),
                templates={"cm.yaml": SETTINGS},
            ),
            write_chart(
                src / "c11",
                "configurable",
                "1.1.0",
                values="replicas: 2\ncolor: blue\n",
                schema=json.dumps(SCHEMA),
                templates={"cm.yaml": SETTINGS + '  edition: "1.1"\n'},
            ),
        ]
    )
    # A description is text from a repository: it must never become markup.
    chart = write_chart(src / "x", "sneaky", "1.0.0")
    chart_yaml = chart / "Chart.yaml"
    chart_yaml.write_text(
        chart_yaml.read_text().replace(
            "description: sneaky for tests", "description: '<script>alert(1)</script>'"
        )
    )
    served.publish([chart])


def settings(cp: ControlPlane, ns: str, release: str) -> dict[str, str] | None:
    status, got = cp.request("GET", f"/api/v1/namespaces/{ns}/configmaps/{release}-settings")
    return got["data"] if status == 200 else None


def installed(
    cp: ControlPlane, helm_binary: Path, repo: HttpChartRepo, ns: str, name: str, tmp_path: Path
) -> None:
    """Revisions 1 (configurable 1.0.0, replicas 1) and 2 (replicas 5), made with helm as
    the admin."""
    admin = Helm(helm_binary, ApiServer(cp.url, insecure=True), tmp_path / "admin")
    who = Credentials(cp.admin_token)
    admin.install(who, name, "configurable", ns, {"replicas": 1}, version="1.0.0", repo=repo.url)
    admin.upgrade(who, name, "configurable", ns, {"replicas": 5}, version="1.0.0", repo=repo.url)
