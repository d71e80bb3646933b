"""Driver name -> class, imported lazily: a missing optional library fails only when used."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from drivers.base import CredentialReaderBus, EventSink

READER_BUSES = {
    "osdp": "drivers.osdp.driver:OsdpReaderBus",
    "serial": "drivers.serial_reader.driver:SerialReaderBus",
}


def load(path: str) -> Any:
    """Import ``module:attribute``."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def build_reader_bus(bus: Any, readers: Sequence[Any], sink: EventSink) -> CredentialReaderBus:
    """Construct the reader bus driver named by ``bus.driver``."""
    try:
        path = READER_BUSES[bus.driver]
    except KeyError:
        raise ValueError(f"unknown reader driver {bus.driver!r}") from None
    factory = load(path)
    bus_obj: CredentialReaderBus = factory.from_settings(bus, readers, sink)
    return bus_obj
