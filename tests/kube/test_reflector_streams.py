"""The reflectors on canned watch streams, so the watch layers (nftproxy.kube.reflector over
nftproxy.kube.client) are tested on machines without the Go-built kube-apiserver.

`FakeApiServer` is a real HTTP server on loopback. It answers each LIST and WATCH with the
next reply a test scripted for that path (JSON list pages, newline-delimited watch events
written as chunks, error statuses) and records every request, so a test checks both what
the sink was told and what the reflector asked for (where a watch resumes, whether it
listed again).
"""

from __future__ import annotations

import json
import logging
import threading
import traceback
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import pytest

from nftproxy.kube.client import Client, ClusterConfig
from nftproxy.kube.objects import PROXY_NAME_LABEL
from nftproxy.kube.reflector import (
    HEADLESS_LABEL,
    EndpointSliceResource,
    KubeWatcher,
    Reflector,
    Resource,
    ServiceResource,
)
from nftproxy.model import Service, ServiceName
from tests.support.recording import RecordingSink, wait_for

Json = dict[str, Any]
AnyReflector = Reflector[Any, Any, Any]

SERVICES = ServiceResource.path
SLICES = EndpointSliceResource.path
NAMESPACE = "shop"
WEB, API = ServiceName(NAMESPACE, "web"), ServiceName(NAMESPACE, "api")

# Fast retries so that reconnects after a failure take a fraction of a second.
FAST_RETRIES: dict[str, Any] = {"backoff_initial": 0.1, "backoff_max": 0.5}


# --- the fake API server ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListReply:
    """One page of a LIST: `continue_token` non-empty means more pages follow."""

    items: list[Json]
    resource_version: str
    continue_token: str = ""


@dataclass(frozen=True, slots=True)
class WatchReply:
    """A 200 watch response: `lines` written as they are, one write (and chunk) each.

    Then `ending`: "end" finishes the response properly, as the API server does at
    timeoutSeconds; "drop" closes the connection without finishing it; "hold" keeps it
    open and silent until the server stops, like a watch on which nothing happens.
    `framing` "chunked" is what the API server sends; "until-close" has no
    Transfer-Encoding, so the body is whatever arrives before the connection closes.
    """

    lines: list[bytes]
    ending: Literal["end", "drop", "hold"] = "hold"
    framing: Literal["chunked", "until-close"] = "chunked"


@dataclass(frozen=True, slots=True)
class StatusReply:
    """An error status with a Status object as body, as the API server answers errors."""

    code: int
    reason: str
    message: str


Reply = ListReply | WatchReply | StatusReply


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """One GET the fake received."""

    path: str
    query: dict[str, str]

    @property
    def is_watch(self) -> bool:
        return self.query.get("watch") in ("true", "1")


class FakeApiServer:
    """Plain HTTP on 127.0.0.1 and an ephemeral port, serving scripted replies in order.

    Replies are queued per (path, LIST or WATCH). A LIST with nothing scripted gets a 500 (the
    reflector retries, and the test's count of LIST requests notices); a WATCH with nothing
    scripted is held open and silent, the quiet state a test ends in.
    """

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.handler_errors: list[str] = []
        self._lock = threading.Lock()
        self._scripted: dict[tuple[str, bool], deque[Reply]] = {}
        self._requests: list[ApiRequest] = []
        self._http = _FakeHttpServer(self)
        # A short poll interval: stop() waits for the serving loop to notice shutdown().
        self._thread = threading.Thread(
            target=self._http.serve_forever, args=(0.05,), name="fake-apiserver", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}"

    def client(self) -> Client:
        return Client(ClusterConfig(server=self.url), timeout=10)

    def script_lists(self, path: str, *replies: ListReply | StatusReply) -> None:
        self._script(path, False, replies)

    def script_watches(self, path: str, *replies: WatchReply | StatusReply) -> None:
        self._script(path, True, replies)

    def _script(self, path: str, watch: bool, replies: tuple[Reply, ...]) -> None:
        with self._lock:
            self._scripted.setdefault((path, watch), deque()).extend(replies)

    def requests(self, path: str, *, watch: bool) -> list[ApiRequest]:
        with self._lock:
            return [r for r in self._requests if r.path == path and r.is_watch == watch]

    def watch_versions(self, path: str) -> list[str]:
        """The resourceVersion each WATCH of `path` started from, in order."""
        return [r.query.get("resourceVersion", "") for r in self.requests(path, watch=True)]

    def next_reply(self, request: ApiRequest) -> Reply:
        with self._lock:
            self._requests.append(request)
            queue = self._scripted.get((request.path, request.is_watch))
            if queue:
                return queue.popleft()
        if request.is_watch:
            return WatchReply([], ending="hold")
        return StatusReply(500, "InternalError", f"fake: no LIST of {request.path} scripted")

    def stop(self) -> None:
        self.stopping.set()  # releases held watches
        self._http.shutdown()
        self._http.server_close()  # joins the request threads
        self._thread.join()


class _FakeHttpServer(ThreadingHTTPServer):
    # Request threads are joined by server_close(), so none outlives its test.
    daemon_threads = False
    block_on_close = True

    def __init__(self, fake: FakeApiServer) -> None:
        super().__init__(("127.0.0.1", 0), _FakeApiHandler)
        self.fake = fake

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Kept for the fixture to fail on, instead of printed and forgotten.
        self.fake.handler_errors.append(traceback.format_exc())


class _FakeApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked transfer encoding needs it
    server: _FakeHttpServer

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        request = ApiRequest(url.path, dict(urllib.parse.parse_qsl(url.query)))
        reply = self.server.fake.next_reply(request)
        self.close_connection = True  # the client opens a connection per request
        try:
            match reply:
                case ListReply():
                    metadata = {"resourceVersion": reply.resource_version}
                    if reply.continue_token:
                        metadata["continue"] = reply.continue_token
                    self._send_json(
                        200, {"kind": "List", "metadata": metadata, "items": reply.items}
                    )
                case StatusReply():
                    self._send_json(
                        reply.code, status_object(reply.code, reply.reason, reply.message)
                    )
                case WatchReply():
                    self._stream(reply)
        except ConnectionError:
            pass  # the reflector hung up first (after an ERROR event, or stopping): fine

    def _send_json(self, code: int, body: Json) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, reply: WatchReply) -> None:
        chunked = reply.framing == "chunked"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        for line in reply.lines:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line) if chunked else line)
        if reply.ending == "hold":
            self.server.fake.stopping.wait()
        elif reply.ending == "end" and chunked:
            self.wfile.write(b"0\r\n\r\n")
        # Otherwise returning closes the connection: "drop", or the end of an until-close body.

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read the recorded requests instead


# --- API objects and watch events -------------------------------------------------------------


def status_object(code: int, reason: str, message: str) -> Json:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def service_object(
    name: str, version: str, *, port: int = 80, cluster_ip: str = "10.96.0.10"
) -> Json:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE, "resourceVersion": version},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "ports": [{"name": "http", "port": port, "targetPort": 8080, "protocol": "TCP"}],
        },
    }


def slice_object(name: str, version: str, *ips: str) -> Json:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "resourceVersion": version,
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


def event(kind: str, obj: Json) -> bytes:
    """One watch event as the API server writes it: a JSON object and a newline."""
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


def bookmark(version: str) -> bytes:
    # A bookmark's object is an empty object of the watched kind but for its resourceVersion.
    return event(
        "BOOKMARK",
        {"kind": "Service", "apiVersion": "v1", "metadata": {"resourceVersion": version}},
    )


def expired_event(version: str) -> bytes:
    message = f"too old resource version: {version} (1000)"
    return event("ERROR", status_object(410, "Expired", message))


def port_of(svc: Service | None) -> int | None:
    return svc.ports[0].port if svc is not None else None


def service_updates(sink: RecordingSink) -> list[tuple[ServiceName, int | None]]:
    """Every update_service call as (name, port, or None for a removal), in order."""
    with sink.lock:
        return [(key, port_of(value)) for kind, key, value in sink.updates if kind == "service"]


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    yield server
    server.stop()
    assert not server.handler_errors, server.handler_errors[0]


@pytest.fixture
def start_reflector(api: FakeApiServer) -> Iterator[Callable[..., AnyReflector]]:
    """Starts a Reflector against the fake; every one is stopped (before the fake) at the end."""
    started: list[AnyReflector] = []

    def start(resource: Resource[Any, Any, Any], **options: Any) -> AnyReflector:
        reflector: AnyReflector = Reflector(api.client(), resource, **{**FAST_RETRIES, **options})
        started.append(reflector)
        reflector.start()
        return reflector

    yield start
    for reflector in started:
        reflector.stop(timeout=10)
        assert not reflector.running, f"reflector {reflector.name} still running"


@pytest.fixture
def start_watcher(api: FakeApiServer) -> Iterator[Callable[[RecordingSink], KubeWatcher]]:
    """Starts a KubeWatcher (Services and EndpointSlices) against the fake; stopped at the end."""
    started: list[KubeWatcher] = []

    def start(sink: RecordingSink) -> KubeWatcher:
        watcher = KubeWatcher(api.client(), sink, **FAST_RETRIES)
        started.append(watcher)
        watcher.start()
        return watcher

    yield start
    for watcher in started:
        watcher.stop(timeout=10)
        assert not any(r.running for r in watcher.reflectors)


def wait_for_watches(api: FakeApiServer, path: str, count: int) -> None:
    wait_for(f"watch request {count}", lambda: len(api.requests(path, watch=True)) >= count)


# --- 410 Gone: list again ---------------------------------------------------------------------


@pytest.mark.parametrize("gone", ["ERROR event", "HTTP status"])
def test_gone_relists_and_the_next_watch_starts_from_the_new_list(
    api: FakeApiServer, start_reflector: Callable[..., AnyReflector], gone: str
) -> None:
    api.script_lists(
        SERVICES,
        ListReply([service_object("web", "5"), service_object("doomed", "6")], "10"),
        # Meanwhile "doomed" was deleted and "api" created; no watch saw either.
        ListReply([service_object("web", "11", port=81), service_object("api", "15")], "20"),
    )
    too_old: WatchReply | StatusReply = (
        WatchReply([expired_event("11")], ending="end")
        if gone == "ERROR event"
        else StatusReply(410, "Expired", "too old resource version: 11 (1000)")
    )
    api.script_watches(
        SERVICES,
        WatchReply([event("MODIFIED", service_object("web", "11", port=81))], ending="end"),
        too_old,
    )
    sink = RecordingSink()
    reflector = start_reflector(ServiceResource(sink))

    wait_for_watches(api, SERVICES, 3)
    assert api.watch_versions(SERVICES) == ["10", "11", "20"]
    lists = api.requests(SERVICES, watch=False)
    assert len(lists) == 2
    # The re-list reads current state: it must not ask for the version that expired.
    assert "resourceVersion" not in lists[1].query
    first, second = sink.service_replaces
    assert set(first) == {WEB, ServiceName(NAMESPACE, "doomed")}
    assert set(second) == {WEB, API}
    assert set(sink.services) == {WEB, API}
    assert port_of(sink.services[WEB]) == 81
    assert service_updates(sink) == [(WEB, 81)]
    stats = reflector.stats
    assert (stats.lists, stats.relists, stats.failures) == (2, 1, 0)
    assert reflector.resource_version == "20"


def test_gone_right_after_a_list_lists_again_after_a_pause(
    api: FakeApiServer, start_reflector: Callable[..., AnyReflector]
) -> None:
    # History already gone when the first watch starts: listing again at once could spin,
    # so the reflector backs off first (a failure), then lists and watches from the new list.
    api.script_lists(
        SERVICES,
        ListReply([service_object("web", "5")], "10"),
        ListReply([service_object("api", "15")], "20"),
    )
    api.script_watches(SERVICES, WatchReply([expired_event("10")], ending="end"))
    sink = RecordingSink()
    reflector = start_reflector(ServiceResource(sink))

    wait_for_watches(api, SERVICES, 2)
    assert api.watch_versions(SERVICES) == ["10", "20"]
    assert len(api.requests(SERVICES, watch=False)) == 2
    assert [set(replace) for replace in sink.service_replaces] == [{WEB}, {API}]
    assert set(sink.services) == {API}
    assert reflector.stats.failures == 1
    assert reflector.stats.lists == 2
    assert "too old resource version: 10" in (reflector.stats.last_error or "")


def test_gone_after_events_on_the_first_watch_relists_without_a_pause(
    api: FakeApiServer, start_reflector: Callable[..., AnyReflector]
) -> None:
    # The watch worked (an event arrived) before its history expired: no spinning to
    # fear, so this is an ordinary re-list, like a 410 on any later watch.
    api.script_lists(
        SERVICES,
        ListReply([service_object("web", "5")], "10"),
        ListReply([service_object("web", "11", port=81), service_object("api", "15")], "20"),
    )
    api.script_watches(
        SERVICES,
        WatchReply(
            [event("MODIFIED", service_object("web", "11", port=81)), expired_event("11")],
            ending="end",
        ),
    )
    sink = RecordingSink()
    reflector = start_reflector(ServiceResource(sink))

    wait_for_watches(api, SERVICES, 2)
    assert api.watch_versions(SERVICES) == ["10", "20"]
    assert set(sink.services) == {WEB, API}
    assert (reflector.stats.lists, reflector.stats.relists, reflector.stats.failures) == (2, 1, 0)


# --- bookmarks --------------------------------------------------------------------------------


def test_bookmarks_move_the_resume_point_without_telling_the_sink(
    api: FakeApiServer, start_reflector: Callable[..., AnyReflector]
) -> None:
    api.script_lists(SERVICES, ListReply([service_object("web", "5")], "10"))
    api.script_watches(
        SERVICES,
        # Only a bookmark, then the server ends the watch (its timeoutSeconds).
        WatchReply([bookmark("15")], ending="end"),
        # A bookmark after an event: the resume point is the bookmark's, the later one.
        WatchReply(
            [event("MODIFIED", service_object("web", "16", port=81)), bookmark("30")],
            ending="end",
        ),
    )
    sink = RecordingSink()
    reflector = start_reflector(ServiceResource(sink))

    wait_for_watches(api, SERVICES, 3)
    assert api.watch_versions(SERVICES) == ["10", "15", "30"]
    for request in api.requests(SERVICES, watch=True):
        assert request.query["allowWatchBookmarks"] == "true"
    assert len(api.requests(SERVICES, watch=False)) == 1
    assert len(sink.service_replaces) == 1
    assert service_updates(sink) == [(WEB, 81)]
    stats = reflector.stats
    assert stats.events == {"BOOKMARK": 2, "MODIFIED": 1}
    assert (stats.lists, stats.relists, stats.failures) == (1, 0, 0)
    assert reflector.resource_version == "30"


# --- a connection that breaks in the middle of an event ---------------------------------------


# Either way the reflector sees the fragment before the cut as a last line: http.client's
# readline hands it over when a chunked stream ends without its last chunk.
@pytest.mark.parametrize("framing", ["chunked", "until-close"])
def test_a_stream_cut_mid_event_resumes_after_the_last_whole_event(
    api: FakeApiServer,
    start_reflector: Callable[..., AnyReflector],
    framing: Literal["chunked", "until-close"],
) -> None:
    api.script_lists(SERVICES, ListReply([service_object("web", "5")], "10"))
    port_82 = event("MODIFIED", service_object("web", "13", port=82))
    api.script_watches(
        SERVICES,
        WatchReply(
            [
                event("ADDED", service_object("api", "11")),
                event("MODIFIED", service_object("web", "12", port=81)),
                port_82[: len(port_82) // 2],
            ],
            ending="drop",
            framing=framing,
        ),
        # The server sends the event again to the watch resumed from version 12.
        WatchReply([port_82], framing=framing),
    )
    sink = RecordingSink()
    reflector = start_reflector(ServiceResource(sink))

    wait_for_watches(api, SERVICES, 2)
    # The resume point moves only after the sink has had the event.
    wait_for("the re-sent event", lambda: reflector.resource_version == "13")
    assert api.watch_versions(SERVICES) == ["10", "12"]
    # Each event exactly once and in order; nothing from the half line.
    assert service_updates(sink) == [(API, 80), (WEB, 81), (WEB, 82)]
    assert port_of(sink.services[WEB]) == 82
    assert len(api.requests(SERVICES, watch=False)) == 1
    # The cut is a failure (then a retry), not a reason to list again.
    assert (reflector.stats.lists, reflector.stats.relists, reflector.stats.failures) == (1, 0, 1)


# --- more stream content ----------------------------------------------------------------------


def test_events_reach_the_sink_in_stream_order(
    api: FakeApiServer, start_reflector: Callable[..., AnyReflector]
) -> None:
    api.script_lists(SERVICES, ListReply([service_object("web", "5")], "10"))
    api.script_watches(
        SERVICES,
        WatchReply(
            [
                event("ADDED", service_object("api", "11", port=90)),
                event("MODIFIED", service_object("api", "12", port=91)),
                event("DELETED", service_object("api", "13", port=91)),
                event("MODIFIED", service_object("web", "14", port=81)),
                event("DELETED", service_object("web", "15", port=81)),
                # Re-created under the same name after its deletion.
                event("ADDED", service_object("web", "16", port=99)),
            ]
        ),
    )
    sink = RecordingSink()
    reflector = start_reflector(ServiceResource(sink))

    wait_for("the last event", lambda: reflector.resource_version == "16")
    assert service_updates(sink) == [
        (API, 90),
        (API, 91),
        (API, None),
        (WEB, 81),
        (WEB, None),
        (WEB, 99),
    ]
    assert {name: port_of(svc) for name, svc in sink.services.items()} == {WEB: 99}
    assert reflector.stats.events == {"ADDED": 2, "MODIFIED": 2, "DELETED": 2}


def test_an_invalid_object_in_a_stream_is_reported_and_left_out(
    api: FakeApiServer,
    start_reflector: Callable[..., AnyReflector],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="nftproxy.kube")
    bad_port = service_object("typo", "12")
    bad_port["spec"]["ports"][0]["port"] = "eighty"  # does not even decode
    api.script_lists(
        SERVICES, ListReply([service_object("web", "5"), service_object("api", "6")], "10")
    )
    api.script_watches(
        SERVICES,
        WatchReply(
            [
                # web becomes invalid: the proxy must stop serving its old version.
                event("MODIFIED", service_object("web", "11", cluster_ip="10.96.0.999")),
                event("ADDED", bad_port),
                event("MODIFIED", service_object("api", "13", port=8443)),
            ]
        ),
    )
    sink = RecordingSink()
    reflector = start_reflector(ServiceResource(sink))

    wait_for("api's update", lambda: reflector.resource_version == "13")
    typo = ServiceName(NAMESPACE, "typo")
    assert service_updates(sink) == [(WEB, None), (typo, None), (API, 8443)]
    assert set(sink.services) == {API}
    messages = [record.getMessage() for record in caplog.records]
    assert any("Service shop/web" in m and "10.96.0.999" in m for m in messages), messages
    assert any("Service shop/typo" in m and "spec.ports[0].port" in m for m in messages), messages
    assert (reflector.stats.invalid_objects, reflector.stats.decode_errors) == (1, 1)
    # Invalid objects are not stream errors: no reconnect, and the watch moved past them.
    assert reflector.stats.failures == 0


def test_an_unavailable_watch_is_retried_from_the_same_version_without_listing(
    api: FakeApiServer, start_reflector: Callable[..., AnyReflector]
) -> None:
    api.script_lists(SERVICES, ListReply([service_object("web", "5")], "10"))
    api.script_watches(
        SERVICES,
        StatusReply(503, "ServiceUnavailable", "the watch cache is not ready"),
        WatchReply([event("ADDED", service_object("api", "11"))]),
    )
    sink = RecordingSink()
    reflector = start_reflector(ServiceResource(sink))

    wait_for("the event after the retry", lambda: API in sink.services)
    assert api.watch_versions(SERVICES) == ["10", "10"]
    assert len(api.requests(SERVICES, watch=False)) == 1
    assert len(sink.service_replaces) == 1
    assert (reflector.stats.failures, reflector.stats.relists) == (1, 0)


# --- lists ------------------------------------------------------------------------------------


def test_a_paginated_list_is_one_replace_and_the_watch_starts_after_it(
    api: FakeApiServer, start_reflector: Callable[..., AnyReflector]
) -> None:
    api.script_lists(
        SERVICES,
        ListReply([service_object("a", "1"), service_object("b", "2")], "10", "page-2"),
        ListReply([service_object("c", "3")], "10"),
    )
    sink = RecordingSink()
    reflector = start_reflector(ServiceResource(sink), page_size=2)

    wait_for_watches(api, SERVICES, 1)
    first, second = api.requests(SERVICES, watch=False)
    assert first.query["limit"] == second.query["limit"] == "2"
    assert "continue" not in first.query
    assert second.query["continue"] == "page-2"
    [replace] = sink.service_replaces
    assert {sid.name for sid in replace} == {"a", "b", "c"}
    assert api.watch_versions(SERVICES) == ["10"]
    assert (reflector.stats.lists, reflector.stats.list_requests) == (1, 2)


def test_an_expired_continue_token_restarts_the_list_and_no_half_list_is_used(
    api: FakeApiServer, start_reflector: Callable[..., AnyReflector]
) -> None:
    api.script_lists(
        SERVICES,
        ListReply([service_object("a", "1"), service_object("b", "2")], "10", "page-2"),
        StatusReply(410, "Expired", "the provided continue parameter is too old"),
        ListReply([service_object("a", "1"), service_object("c", "25")], "30"),
    )
    sink = RecordingSink()
    reflector = start_reflector(ServiceResource(sink), page_size=2)

    wait_for_watches(api, SERVICES, 1)
    lists = api.requests(SERVICES, watch=False)
    assert [r.query.get("continue") for r in lists] == [None, "page-2", None]
    [replace] = sink.service_replaces
    assert {sid.name for sid in replace} == {"a", "c"}
    assert api.watch_versions(SERVICES) == ["30"]
    assert (reflector.stats.lists, reflector.stats.list_restarts) == (1, 1)
    assert reflector.stats.failures == 0


def test_the_watcher_asks_only_for_what_this_proxy_serves(
    api: FakeApiServer, start_watcher: Callable[[RecordingSink], KubeWatcher]
) -> None:
    api.script_lists(SERVICES, ListReply([service_object("web", "5")], "10"))
    api.script_lists(SLICES, ListReply([slice_object("web-1", "7", "10.244.0.5")], "12"))
    api.script_watches(
        SLICES,
        WatchReply([event("MODIFIED", slice_object("web-1", "13", "10.244.0.5", "10.244.1.6"))]),
    )
    sink = RecordingSink()
    watcher = start_watcher(sink)
    assert watcher.wait_synced(15)
    key = (NAMESPACE, "web-1")
    wait_for(
        "the slice update",
        lambda: key in sink.slices and len(sink.slices[key].endpoints) == 2,
    )
    assert [e.ip for e in sink.slices[key].endpoints] == ["10.244.0.5", "10.244.1.6"]
    assert set(sink.services) == {WEB}
    wait_for_watches(api, SERVICES, 1)

    # Services labelled for another proxy, and headless slices, are filtered by the server.
    not_others = f"!{PROXY_NAME_LABEL}"
    for path, selector in [(SERVICES, not_others), (SLICES, f"{not_others},!{HEADLESS_LABEL}")]:
        for watch in (False, True):
            [request] = api.requests(path, watch=watch)
            assert request.query["labelSelector"] == selector, (path, watch)
