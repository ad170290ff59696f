"""Chart repositories on loopback for tests and demos: charts packaged and indexed by helm
itself, served over HTTP from a directory the caller owns."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from nftproxy.dashboard.helm import Helm

__all__ = ["AGNHOST_IMAGE", "WEB_APP", "HttpChartRepo", "write_chart"]

# The e2e image the project's cluster builds (lab.cluster.images): `netexec` answers HTTP on
# 8080, /hostname with the pod's name.
AGNHOST_IMAGE = "registry.k8s.io/e2e-test-images/agnhost:2.63.0"
# A web app's templates: agnhost netexec (`replicas` of them, ready once /hostname answers,
# `message` in their environment) behind a Service (`service.type`, NodePort unless given;
# `service.port`, 80 unless given; its port named http).
WEB_APP = {
    "deployment.yaml": f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{{{ .Release.Name }}}}
spec:
  replicas: {{{{ .Values.replicas }}}}
  selector:
    matchLabels: {{app: {{{{ .Release.Name }}}}}}
  template:
    metadata:
      labels: {{app: {{{{ .Release.Name }}}}}}
    spec:
      containers:
      - name: web
        image: {AGNHOST_IMAGE}
        args: [netexec, --http-port=8080]
        ports: [{{containerPort: 8080}}]
        env:
        - {{name: MESSAGE, value: {{{{ .Values.message | default "" | quote }}}}}}
        readinessProbe:
          httpGet: {{path: /hostname, port: 8080}}
          periodSeconds: 1
""",
    "service.yaml": """\
apiVersion: v1
kind: Service
metadata:
  name: {{ .Release.Name }}
spec:
  type: {{ (.Values.service).type | default "NodePort" }}
  selector: {app: {{ .Release.Name }}}
  ports:
  - {name: http, port: {{ (.Values.service).port | default 80 }}, targetPort: 8080, protocol: TCP}
""",
}


def write_chart(
    root: Path,
    name: str,
    version: str,
    *,
    app_version: str = "1.0.0",
    values: str = "replicas: 1\n",
    templates: dict[str, str] | None = None,
    schema: str | None = None,
    description: str = "",
    readme: str | None = None,
) -> Path:
    """A chart's source directory: Chart.yaml, values.yaml, templates (and a values schema,
    a README)."""
    chart = root / f"{name}-{version}"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        f"apiVersion: v2\nname: {name}\nversion: {version}\nappVersion: {app_version!r}\n"
        f"description: {json.dumps(description) if description else f'{name} for tests'}\n"
        "type: application\n"
    )
    if readme is not None:
        (chart / "README.md").write_text(readme)
    (chart / "values.yaml").write_text(values)
    if schema is not None:
        (chart / "values.schema.json").write_text(schema)
    for file, text in (templates or {}).items():
        (chart / "templates" / file).write_text(text)
    return chart


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class HttpChartRepo:
    """A classic Helm repository (index.yaml and .tgz files) on 127.0.0.1."""

    def __init__(self, helm: Helm, directory: Path) -> None:
        self.helm = helm
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        handler = functools.partial(_Quiet, directory=str(directory))
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="chart-repo", daemon=True
        )

    def publish(self, charts: Iterable[Path]) -> None:
        """Package each chart source directory with `helm package` and index them all."""
        for chart in charts:
            self.helm.run(["package", str(chart), "--destination", str(self.directory)])
        self.helm.run(["repo", "index", str(self.directory), "--url", self.url])

    def __enter__(self) -> HttpChartRepo:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
