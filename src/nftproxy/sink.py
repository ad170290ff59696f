"""What a source of cluster state feeds: `Sink`. Both sources, the API's reflectors
(kube.reflector) and a directory of manifests (sources.watching), speak it; the daemon's
ProxierSink passes it on to the Proxier."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from nftproxy.model import EndpointSlice, Service, ServiceName, SliceName

__all__ = ["Sink"]


class Sink(Protocol):
    """Where Services, EndpointSlices and the ServiceCIDR ranges go, as a source learns
    them: whole pictures (a list, a directory read) or one object at a time (a watch
    event; None: deleted)."""

    def replace_services(self, services: Mapping[ServiceName, Service]) -> None: ...

    def update_service(self, name: ServiceName, service: Service | None) -> None: ...

    def replace_slices(self, slices: Mapping[SliceName, EndpointSlice]) -> None: ...

    def update_slice(self, name: SliceName, endpoint_slice: EndpointSlice | None) -> None: ...

    def replace_all(
        self,
        services: Mapping[ServiceName, Service],
        slices: Mapping[SliceName, EndpointSlice],
        *,
        complete: bool = True,
        service_cidrs: tuple[str, ...] | None = None,
    ) -> None:
        """Both at once, and the ServiceCIDR ranges when given. Not `complete`: some inputs
        could not be read, so what they described must stay as it is."""

    def set_service_cidrs(self, cidrs: tuple[str, ...]) -> None:
        """The ranges of the ServiceCIDR objects."""
