"""A recording Sink and a polling wait, shared by the reflector tests (against a real
kube-apiserver in test_reflector.py, against canned streams in test_reflector_streams.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from nftproxy.model import EndpointSlice, Service, ServiceName, SliceName


class RecordingSink:
    """A Sink that keeps the current picture and every call, for assertions."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.services: dict[ServiceName, Service] = {}
        self.slices: dict[SliceName, EndpointSlice] = {}
        self.service_replaces: list[dict[ServiceName, Service]] = []
        self.slice_replaces: list[dict[SliceName, EndpointSlice]] = []
        self.updates: list[tuple[str, Any, Any]] = []

    def replace_services(self, services: dict[ServiceName, Service]) -> None:
        with self.lock:
            self.services = dict(services)
            self.service_replaces.append(dict(services))

    def update_service(self, sid: ServiceName, svc: Service | None) -> None:
        with self.lock:
            self.updates.append(("service", sid, svc))
            if svc is None:
                self.services.pop(sid, None)
            else:
                self.services[sid] = svc

    def replace_slices(self, slices: dict[SliceName, EndpointSlice]) -> None:
        with self.lock:
            self.slices = dict(slices)
            self.slice_replaces.append(dict(slices))

    def update_slice(self, key: SliceName, sl: EndpointSlice | None) -> None:
        with self.lock:
            self.updates.append(("slice", key, sl))
            if sl is None:
                self.slices.pop(key, None)
            else:
                self.slices[key] = sl


def wait_for(what: str, check: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll `check` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class RecordingProxier:
    """Stands in for a Proxier behind a ProxierSink: records what reaches it."""

    def __init__(self) -> None:
        self.replaced: list[tuple[dict[Any, Any], dict[Any, Any]]] = []
        self.updates: list[tuple[str, Any, Any]] = []

    def replace_all(self, services: Any, slices: Any) -> None:
        self.replaced.append((dict(services), dict(slices)))

    def replace_services(self, services: Any) -> None:
        self.updates.append(("services", None, dict(services)))

    def replace_slices(self, slices: Any) -> None:
        self.updates.append(("slices", None, dict(slices)))

    def update_service(self, sid: ServiceName, svc: Service | None) -> None:
        self.updates.append(("service", sid, svc))

    def update_slice(self, key: SliceName, sl: EndpointSlice | None) -> None:
        self.updates.append(("slice", key, sl))
