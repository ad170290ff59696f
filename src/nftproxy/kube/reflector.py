"""List+watch from the API: Services, EndpointSlices and ServiceCIDRs into a Sink, this Node
into a callback. One thread per resource, in three layers: `Reflector.run` retries forever
with backoff, `_list_and_watch` lists then watches until 410 Gone, `_watch` is one watch
request. Skipped and invalid objects are absent for the Sink. Timings: docs/daemon.md."""

from __future__ import annotations

import logging
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

import msgspec

from nftproxy import addresses
from nftproxy.kube.client import ApiError, Client, Forbidden, Gone, Unavailable
from nftproxy.kube.objects import (
    PROXY_NAME_LABEL,
    InvalidObject,
    RawEndpointSlice,
    RawObjectMeta,
    RawService,
    RawServiceCIDR,
    Skip,
    decode_json,
    to_service,
    to_service_cidr,
    to_slice,
)
from nftproxy.model import EndpointSlice, Service, ServiceCIDR, ServiceName, SliceName
from nftproxy.sink import Sink

__all__ = [
    "HEADLESS_LABEL",
    "ZONE_LABEL",
    "EndpointSliceResource",
    "KubeWatcher",
    "NodeInfo",
    "NodeResource",
    "RawNode",
    "Reflector",
    "ReflectorStats",
    "Resource",
    "ServiceResource",
]

log = logging.getLogger("nftproxy.kube")

HEADLESS_LABEL: Final = "service.kubernetes.io/headless"
ZONE_LABEL: Final = "topology.kubernetes.io/zone"


RawT = TypeVar("RawT")
KeyT = TypeVar("KeyT")
ValT = TypeVar("ValT")


# --- wire shapes ------------------------------------------------------------------------------


class _ListMeta(msgspec.Struct, rename="camel", gc=False):
    resource_version: str = ""
    continue_: str = msgspec.field(default="", name="continue")


class _List(msgspec.Struct, Generic[RawT], gc=False):
    metadata: _ListMeta | None = None
    items: tuple[RawT, ...] | None = None


class _Event(msgspec.Struct, gc=False):
    type: str = ""
    object: msgspec.Raw = msgspec.Raw()


class _Status(msgspec.Struct, gc=False):
    code: int = 0
    reason: str = ""
    message: str = ""


class _MetaOnly(msgspec.Struct, gc=False):
    metadata: RawObjectMeta | None = None


class RawNodeAddress(msgspec.Struct, gc=False):
    type: str = ""
    address: str = ""


class RawNodeStatus(msgspec.Struct, gc=False):
    addresses: tuple[RawNodeAddress, ...] | None = None


class RawNode(msgspec.Struct, gc=False):
    metadata: RawObjectMeta | None = None
    status: RawNodeStatus | None = None


# --- resources --------------------------------------------------------------------------------


class Resource(ABC, Generic[RawT, KeyT, ValT]):
    """What a Reflector needs to know about one kind: where, how to decode, whom to tell."""

    kind: str  # "Service"
    plural: str  # "services"
    path: str  # the cluster-wide collection
    raw_type: type[RawT]
    # Not every API server serves it (or lets us read it): then it is taken as empty, and
    # looked for again now and then, instead of holding everything else back.
    optional: bool = False

    def params(self) -> dict[str, str]:
        """Selectors applied to both LIST and WATCH."""
        return {}

    def decode(self, data: bytes) -> RawT:
        """One object from JSON; raises InvalidObject naming it when it cannot be decoded."""
        try:
            return msgspec.json.decode(data, type=self.raw_type)
        except msgspec.DecodeError as exc:
            raise InvalidObject(self.kind, "", "", "", str(exc)) from None

    @abstractmethod
    def meta(self, raw: RawT) -> RawObjectMeta | None: ...

    @abstractmethod
    def key(self, namespace: str, name: str) -> KeyT: ...

    @abstractmethod
    def convert(self, raw: RawT, report: Callable[[InvalidObject], None]) -> ValT | Skip:
        """Validate; raise InvalidObject when it cannot be used, `report` parts left out."""

    @abstractmethod
    def replace(self, values: dict[KeyT, ValT]) -> None: ...

    @abstractmethod
    def update(self, key: KeyT, value: ValT | None) -> None: ...


def _not_served_by_others(proxy_name: str | None) -> list[str]:
    # kube-proxy filters server-side the same way. With a proxy name, Services without the
    # label are still ours, and "absent or equal" has no selector: to_service decides.
    return [] if proxy_name else [f"!{PROXY_NAME_LABEL}"]


class ServiceResource(Resource[RawService, ServiceName, Service]):
    kind = "Service"
    plural = "services"
    path = "/api/v1/services"
    raw_type = RawService

    def __init__(self, sink: Sink, service_proxy_name: str | None = None) -> None:
        self.sink = sink
        self.service_proxy_name = service_proxy_name

    def params(self) -> dict[str, str]:
        selector = _not_served_by_others(self.service_proxy_name)
        return {"labelSelector": ",".join(selector)} if selector else {}

    def decode(self, data: bytes) -> RawService:
        return decode_json(data, RawService)

    def meta(self, raw: RawService) -> RawObjectMeta | None:
        return raw.metadata

    def key(self, namespace: str, name: str) -> ServiceName:
        return ServiceName(namespace or "default", name)

    def convert(self, raw: RawService, report: Callable[[InvalidObject], None]) -> Service | Skip:
        return to_service(raw, service_proxy_name=self.service_proxy_name)

    def replace(self, values: dict[ServiceName, Service]) -> None:
        self.sink.replace_services(values)

    def update(self, key: ServiceName, value: Service | None) -> None:
        self.sink.update_service(key, value)


class EndpointSliceResource(Resource[RawEndpointSlice, SliceName, EndpointSlice]):
    kind = "EndpointSlice"
    plural = "endpointslices"
    path = "/apis/discovery.k8s.io/v1/endpointslices"
    raw_type = RawEndpointSlice

    def __init__(self, sink: Sink, service_proxy_name: str | None = None) -> None:
        self.sink = sink
        self.service_proxy_name = service_proxy_name

    def params(self) -> dict[str, str]:
        selector = [*_not_served_by_others(self.service_proxy_name), f"!{HEADLESS_LABEL}"]
        return {"labelSelector": ",".join(selector)}

    def decode(self, data: bytes) -> RawEndpointSlice:
        return decode_json(data, RawEndpointSlice)

    def meta(self, raw: RawEndpointSlice) -> RawObjectMeta | None:
        return raw.metadata

    def key(self, namespace: str, name: str) -> SliceName:
        return (namespace or "default", name)

    def convert(
        self, raw: RawEndpointSlice, report: Callable[[InvalidObject], None]
    ) -> EndpointSlice | Skip:
        return to_slice(raw, report=report)

    def replace(self, values: dict[SliceName, EndpointSlice]) -> None:
        self.sink.replace_slices(values)

    def update(self, key: SliceName, value: EndpointSlice | None) -> None:
        self.sink.update_slice(key, value)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What the proxy needs to know about its own Node."""

    name: str
    zone: str | None
    internal_ips: tuple[str, ...] = ()
    external_ips: tuple[str, ...] = ()


def _node_ips(listed: tuple[RawNodeAddress, ...], kind: str) -> tuple[str, ...]:
    """The Node's addresses of one type in standard form (leading zeros accepted, as
    kube-proxy's ParseIPSloppy does); like kube-proxy, it skips what does not parse."""
    out: list[str] = []
    for entry in listed:
        if entry.type == kind:
            try:
                out.append(str(addresses.ip_address(entry.address)))
            except ValueError:
                continue
    return tuple(out)


class NodeResource(Resource[RawNode, str, NodeInfo]):
    """This node only; `on_change` gets its NodeInfo (None: not found) whenever it changes."""

    kind = "Node"
    plural = "nodes"
    path = "/api/v1/nodes"
    raw_type = RawNode

    def __init__(self, node_name: str, on_change: Callable[[NodeInfo | None], None]) -> None:
        self.node_name = node_name
        self.on_change = on_change
        self._last: NodeInfo | None = None
        self._told = False

    def params(self) -> dict[str, str]:
        return {"fieldSelector": f"metadata.name={self.node_name}"}

    def meta(self, raw: RawNode) -> RawObjectMeta | None:
        return raw.metadata

    def key(self, namespace: str, name: str) -> str:
        return name

    def convert(self, raw: RawNode, report: Callable[[InvalidObject], None]) -> NodeInfo | Skip:
        meta = raw.metadata or RawObjectMeta()
        listed = (raw.status.addresses if raw.status else None) or ()
        return NodeInfo(
            name=meta.name,
            zone=(meta.labels or {}).get(ZONE_LABEL) or None,
            internal_ips=_node_ips(listed, "InternalIP"),
            external_ips=_node_ips(listed, "ExternalIP"),
        )

    def _tell(self, info: NodeInfo | None) -> None:
        if self._told and info == self._last:
            return  # status heartbeats change nothing we use
        self._last, self._told = info, True
        self.on_change(info)

    def replace(self, values: dict[str, NodeInfo]) -> None:
        self._tell(values.get(self.node_name))

    def update(self, key: str, value: NodeInfo | None) -> None:
        if key == self.node_name:
            self._tell(value)


class ServiceCIDRResource(Resource[RawServiceCIDR, str, ServiceCIDR]):
    """Every ServiceCIDR; `on_change` gets all their ranges whenever they change."""

    kind = "ServiceCIDR"
    plural = "servicecidrs"
    path = "/apis/networking.k8s.io/v1/servicecidrs"
    raw_type = RawServiceCIDR
    optional = True

    def __init__(self, on_change: Callable[[tuple[str, ...]], None]) -> None:
        self.on_change = on_change
        self._objects: dict[str, ServiceCIDR] = {}
        self._last: tuple[str, ...] | None = None

    def decode(self, data: bytes) -> RawServiceCIDR:
        return decode_json(data, RawServiceCIDR)

    def meta(self, raw: RawServiceCIDR) -> RawObjectMeta | None:
        return raw.metadata

    def key(self, namespace: str, name: str) -> str:
        return name

    def convert(
        self, raw: RawServiceCIDR, report: Callable[[InvalidObject], None]
    ) -> ServiceCIDR | Skip:
        return to_service_cidr(raw)

    def _tell(self) -> None:
        cidrs = tuple(sorted({c for obj in self._objects.values() for c in obj.cidrs}))
        if cidrs != self._last:
            self._last = cidrs
            self.on_change(cidrs)

    def replace(self, values: dict[str, ServiceCIDR]) -> None:
        self._objects = dict(values)
        self._tell()

    def update(self, key: str, value: ServiceCIDR | None) -> None:
        if value is None:
            self._objects.pop(key, None)
        else:
            self._objects[key] = value
        self._tell()


# --- the reflector ----------------------------------------------------------------------------


@dataclass(slots=True)
class ReflectorStats:
    """Counters for logs and metrics; plain attributes, written by the reflector thread."""

    lists: int = 0  # complete lists handed to the consumer
    list_requests: int = 0  # LIST pages requested
    list_restarts: int = 0  # lists started again because a continue token expired
    watches: int = 0  # watch requests opened
    relists: int = 0  # lists because a watch got 410 Gone
    events: dict[str, int] = field(default_factory=dict)  # by type, BOOKMARK and ERROR too
    decode_errors: int = 0  # objects or stream lines that could not be decoded
    invalid_objects: int = 0  # objects decoded but rejected by validation
    invalid_parts: int = 0  # parts left out of otherwise valid objects (bad endpoints)
    failures: int = 0  # attempts that ended in an error (then backoff)
    last_error: str | None = None
    last_event_at: float = 0.0  # time.monotonic() of the last event of any type


class _Stopped(Exception):
    pass


_WATCH_EVENTS: Final = frozenset({"ADDED", "MODIFIED", "DELETED"})


class Reflector(Generic[RawT, KeyT, ValT]):
    """Mirror one resource into its consumer from a thread; restartable after stop()."""

    def __init__(
        self,
        client: Client,
        resource: Resource[RawT, KeyT, ValT],
        *,
        page_size: int = 500,
        watch_timeout: tuple[int, int] = (290, 310),
        idle_grace: float = 30.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.resource = resource
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.idle_grace = idle_grace
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.rng = rng or random.Random()
        self.stats = ReflectorStats()
        self.synced = threading.Event()  # set once the first complete list was handed over
        self.last_error: Exception | None = None
        # Where the next watch starts; None means list first. Kept across stop()/start().
        self.resource_version: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._stream: Any = None
        self._thread: threading.Thread | None = None
        self._succeeded = False
        self._invalid_logged: dict[KeyT, str] = {}
        decoder_type: Any = _List
        self._page_decoder = msgspec.json.Decoder(decoder_type[resource.raw_type])
        self._loose_page_decoder = msgspec.json.Decoder(_List[msgspec.Raw])
        self._event_decoder = msgspec.json.Decoder(_Event)

    @property
    def name(self) -> str:
        return self.resource.plural

    # -- lifecycle

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"reflector for {self.name} is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name=f"reflector-{self.name}", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the thread to stop without waiting (stop() waits)."""
        self._stop.set()
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop and wait for the thread; an open watch is closed to unblock it."""
        self._stop.set()
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("reflector for %s did not stop within %ss", self.name, timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- layer 1: retry forever

    def run(self) -> None:
        delay = self.backoff_initial
        while not self._stop.is_set():
            self._succeeded = False
            try:
                self._list_and_watch()
            except _Stopped:
                break
            except Forbidden as exc:
                if not self._unavailable(exc):
                    self._failed(exc, logging.ERROR)
            except (Gone, Unavailable) as exc:
                self._failed(exc, logging.WARNING)
            except ApiError as exc:
                if not (exc.status == 404 and self._unavailable(exc)):
                    self._failed(exc, logging.ERROR)
            except Exception as exc:
                # A bug (ours or the consumer's): the picture may be incomplete, list again.
                log.exception("%s: unexpected error; will list again", self.name)
                self._failed(exc, None)
                self.resource_version = None
            if self._stop.is_set():
                break
            if self._succeeded:
                delay = self.backoff_initial
            pause = min(delay, self.backoff_max) * self.rng.uniform(0.8, 1.2)
            log.info("%s: retrying in %.1fs", self.name, pause)
            self._stop.wait(pause)
            delay = min(delay * 2, self.backoff_max)

    def _unavailable(self, exc: ApiError) -> bool:
        """An optional resource the server does not serve or let us read: empty for now.
        Whether it was handled so."""
        if not self.resource.optional:
            return False
        self.last_error = exc
        if not self.synced.is_set():
            log.warning("%s: %s; going on without, and trying again later", self.name, exc)
            self.resource.replace({})
            self.synced.set()
        # Asked again at the longest backoff: a cheap request, a rare change.
        self._succeeded = False
        return True

    def _failed(self, exc: Exception, level: int | None) -> None:
        self.last_error = exc
        self.stats.failures += 1
        self.stats.last_error = str(exc)
        if level is not None:
            log.log(level, "%s: %s", self.name, exc)

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise _Stopped

    # -- layer 2: list, then watch until the history is gone

    def _list_and_watch(self) -> None:
        listed: str | None = None  # a list's version no watch has moved past yet
        while True:
            self._check_stop()
            if self.resource_version is None:
                self.resource_version = listed = self._list()
            try:
                self._watch(self.resource_version)
            except Gone as exc:
                at_once = self.resource_version == listed
                self.resource_version = None
                if at_once:
                    raise  # expired right after a list: back off rather than spin
                self.stats.relists += 1
                log.info("%s: watch history expired (%s); listing again", self.name, exc.message)
                continue
            listed = None

    def _list(self) -> str:
        for attempt in range(3):
            try:
                return self._list_pages()
            except _ContinueExpired as exc:
                self.stats.list_restarts += 1
                log.info("%s: list continue token expired; restarting the list", self.name)
                if attempt == 2:
                    raise exc.gone from None
        raise AssertionError("unreachable")

    def _list_pages(self) -> str:
        values: dict[KeyT, ValT] = {}
        invalid: dict[KeyT, str] = {}
        params = dict(self.resource.params())
        params["limit"] = str(self.page_size)
        token, version = "", ""
        while True:
            self._check_stop()
            if token:
                params["continue"] = token
            try:
                body = self.client.get(self.resource.path, params)
            except Gone as exc:
                if token:
                    raise _ContinueExpired(exc) from None
                raise
            self.stats.list_requests += 1
            meta, items = self._decode_page(body)
            for item in items:
                if isinstance(item, InvalidObject):
                    self._invalid(item, "", invalid)
                    continue
                got = self._convert(item, invalid)
                if got is not None:
                    key, value = got
                    if value is not None and not isinstance(value, Skip):
                        values[key] = value
            version = meta.resource_version if meta else version
            token = meta.continue_ if meta else ""
            if not token:
                break
        self._check_stop()
        self._invalid_logged = invalid
        self.resource.replace(values)
        self.stats.lists += 1
        self._succeeded = True
        self.synced.set()
        log.debug("%s: listed %d at resourceVersion %s", self.name, len(values), version)
        return version

    def _decode_page(self, body: bytes) -> tuple[_ListMeta | None, list[RawT | InvalidObject]]:
        try:
            page = self._page_decoder.decode(body)
            return page.metadata, list(page.items or ())
        except msgspec.ValidationError:
            pass
        except msgspec.DecodeError as exc:
            raise Unavailable("GET", self.resource.path, 0, "", f"malformed list: {exc}") from None
        # Some item has a field of the wrong type: decode one by one to lose only that one.
        loose = self._loose_page_decoder.decode(body)
        items: list[RawT | InvalidObject] = []
        for raw in loose.items or ():
            try:
                items.append(self.resource.decode(bytes(raw)))
            except InvalidObject as exc:
                items.append(exc)
        return loose.metadata, items

    def _convert(
        self, raw: RawT, invalid: dict[KeyT, str]
    ) -> tuple[KeyT, ValT | Skip | None] | None:
        """(key, value, Skip or None when invalid), or None for an object without a name."""
        meta = self.resource.meta(raw)
        if meta is None or not meta.name:
            self.stats.invalid_objects += 1
            log.warning("%s: ignoring an object without metadata.name", self.name)
            return None
        key = self.resource.key(meta.namespace, meta.name)
        left_out: list[InvalidObject] = []
        try:
            value = self.resource.convert(raw, left_out.append)
        except InvalidObject as exc:
            self._invalid(exc, meta.resource_version, invalid, key)
            return key, None
        if left_out:
            self._partly_invalid(left_out, meta.resource_version, invalid, key)
        return key, value

    def _invalid(
        self,
        exc: InvalidObject,
        version: str,
        invalid: dict[KeyT, str],
        key: KeyT | None = None,
    ) -> KeyT | None:
        if key is None:
            if not exc.name:
                self.stats.decode_errors += 1
                log.warning("%s: %s", self.name, exc)
                return None
            key = self.resource.key(exc.namespace, exc.name)
            self.stats.decode_errors += 1
        else:
            self.stats.invalid_objects += 1
        # Logged once per resourceVersion: re-lists and resyncs repeat the same objects.
        if self._invalid_logged.get(key) != version or not version:
            log.warning("ignoring invalid %s", exc)
        invalid[key] = version
        return key

    def _partly_invalid(
        self, left_out: list[InvalidObject], version: str, invalid: dict[KeyT, str], key: KeyT
    ) -> None:
        self.stats.invalid_parts += len(left_out)
        # Logged once per resourceVersion, like invalid objects: `invalid` remembers it.
        if self._invalid_logged.get(key) != version or not version:
            for exc in left_out:
                log.warning("ignoring invalid %s; the rest of it is used", exc)
        invalid[key] = version

    # -- layer 3: one watch request

    def _watch(self, version: str) -> None:
        low, high = self.watch_timeout
        timeout = self.rng.randint(low, high)
        params = dict(self.resource.params())
        params.update(
            watch="true",
            resourceVersion=version,
            allowWatchBookmarks="true",
            timeoutSeconds=str(timeout),
        )
        started = time.monotonic()
        stream = self.client.watch(
            self.resource.path, params, idle_timeout=timeout + self.idle_grace
        )
        with self._lock:
            if self._stop.is_set():
                stream.close()
                raise _Stopped
            self._stream = stream
        self.stats.watches += 1
        lines = 0
        try:
            for line in stream:
                lines += 1
                self._event(line)
        finally:
            with self._lock:
                self._stream = None
            stream.close()
        self._check_stop()
        if lines == 0 and time.monotonic() - started < 1.0:
            raise Unavailable("GET", self.resource.path, 0, "", "watch ended at once")

    def _event(self, line: bytes) -> None:
        try:
            event = self._event_decoder.decode(line)
        except msgspec.DecodeError as exc:
            self.stats.decode_errors += 1
            # The stream is out of step; resume from the last resourceVersion.
            raise Unavailable("GET", self.resource.path, 0, "", f"bad watch line: {exc}") from None
        kind = event.type
        events = self.stats.events
        events[kind] = events.get(kind, 0) + 1
        self.stats.last_event_at = time.monotonic()
        obj = bytes(event.object) or b"{}"
        if kind == "ERROR":
            self._error_event(obj)
        elif kind == "BOOKMARK":
            meta = msgspec.json.decode(obj, type=_MetaOnly).metadata
            if meta and meta.resource_version:
                self.resource_version = meta.resource_version
            self._succeeded = True
        elif kind in _WATCH_EVENTS:
            self._object_event(kind, obj)
            self._succeeded = True
        else:
            log.warning("%s: ignoring watch event of unknown type %r", self.name, kind)

    def _error_event(self, obj: bytes) -> None:
        try:
            status = msgspec.json.decode(obj, type=_Status)
        except msgspec.DecodeError:
            status = _Status(message=obj[:300].decode(errors="replace"))
        args = ("GET", self.resource.path, status.code, status.reason, status.message)
        if status.code == 410:
            raise Gone(*args)
        if status.code in (401, 403):
            raise Forbidden(*args)
        if status.code == 429 or status.code >= 500 or status.code == 0:
            raise Unavailable(*args)
        raise ApiError(*args)

    def _object_event(self, kind: str, obj: bytes) -> None:
        scratch: dict[KeyT, str] = {}
        try:
            raw = self.resource.decode(obj)
        except InvalidObject as exc:
            key = self._invalid(exc, "", scratch)
            if key is not None:
                self._invalid_logged[key] = ""
                self.resource.update(key, None)
            return
        meta = self.resource.meta(raw)
        version = meta.resource_version if meta is not None else ""
        if kind == "DELETED":
            if meta is not None and meta.name:
                key = self.resource.key(meta.namespace, meta.name)
                self._invalid_logged.pop(key, None)
                self.resource.update(key, None)
        else:
            got = self._convert(raw, scratch)
            if got is not None:
                key, value = got
                if value is None or isinstance(value, Skip):
                    self.resource.update(key, None)
                else:
                    self._invalid_logged.pop(key, None)
                    self.resource.update(key, value)
                self._invalid_logged.update(scratch)
        # Advanced only after the consumer has the event: a crash before resumes before it.
        if version:
            self.resource_version = version


class _ContinueExpired(Exception):
    def __init__(self, gone: Gone) -> None:
        super().__init__(str(gone))
        self.gone = gone


# --- all three together -----------------------------------------------------------------------


class KubeWatcher:
    """The Service, EndpointSlice and (optionally) Node and ServiceCIDR reflectors of one
    proxy; all but the Node's feed `sink`."""

    def __init__(
        self,
        client: Client,
        sink: Sink,
        *,
        node_name: str | None = None,
        on_node: Callable[[NodeInfo | None], None] | None = None,
        watch_service_cidrs: bool = False,
        service_proxy_name: str | None = None,
        **options: Any,
    ) -> None:
        self.services = Reflector(client, ServiceResource(sink, service_proxy_name), **options)
        self.slices = Reflector(client, EndpointSliceResource(sink, service_proxy_name), **options)
        self.node: Reflector[RawNode, str, NodeInfo] | None = None
        if node_name and on_node is not None:
            self.node = Reflector(client, NodeResource(node_name, on_node), **options)
        self.service_cidrs: Reflector[RawServiceCIDR, str, ServiceCIDR] | None = None
        if watch_service_cidrs:
            resource = ServiceCIDRResource(sink.set_service_cidrs)
            self.service_cidrs = Reflector(client, resource, **options)

    @property
    def reflectors(self) -> list[Reflector[Any, Any, Any]]:
        found: list[Reflector[Any, Any, Any]] = [self.services, self.slices]
        if self.node is not None:
            found.append(self.node)
        if self.service_cidrs is not None:
            found.append(self.service_cidrs)
        return found

    def start(self) -> None:
        for r in self.reflectors:
            r.start()

    def stop(self, timeout: float = 10.0) -> None:
        for r in self.reflectors:
            r.request_stop()  # all at once, then wait for each
        for r in self.reflectors:
            r.stop(timeout)

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Whether every reflector completed its first list within `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for r in self.reflectors:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not r.synced.wait(left):
                return False
        return True

    def stats(self) -> Mapping[str, ReflectorStats]:
        return {r.name: r.stats for r in self.reflectors}
