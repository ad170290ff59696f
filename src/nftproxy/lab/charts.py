"""Chart repositories on loopback for tests and demos: charts packaged and indexed by helm
itself, served over HTTP from a directory the caller owns."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from nftproxy.dashboard.helm import Helm

__all__ = ["HttpChartRepo", "write_chart"]


def write_chart(
    root: Path,
    name: str,
    version: str,
    *,
    app_version: str = "1.0.0",
    values: str = "replicas: 1\n",
    templates: dict[str, str] | None = None,
    schema: str | None = None,
) -> Path:
    """A chart's source directory: Chart.yaml, values.yaml, templates (and a values schema)."""
    chart = root / f"{name}-{version}"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        f"apiVersion: v2\nname: {name}\nversion: {version}\nappVersion: {app_version!r}\n"
        f"description: {name} for tests\ntype: application\n"
    )
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
