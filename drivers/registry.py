"""Driver name -> constructor, imported lazily: a missing optional library fails only when used."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from drivers.base import CredentialReaderBus, EventSink


def _serial(bus: Any, readers: Sequence[Any], sink: EventSink) -> CredentialReaderBus:
    from drivers.serial_reader.driver import SerialReaderBus

    if len(readers) != 1:
        raise ValueError(f"serial line {bus.name!r} needs exactly one reader")
    driver: CredentialReaderBus = SerialReaderBus(bus, readers[0].name, sink)
    return driver


def _osdp(bus: Any, readers: Sequence[Any], sink: EventSink) -> CredentialReaderBus:
    module = importlib.import_module("drivers.osdp.driver")
    driver: CredentialReaderBus = module.OsdpReaderBus(bus, readers, sink)
    return driver


READER_BUSES: dict[str, Callable[[Any, Sequence[Any], EventSink], CredentialReaderBus]] = {
    "osdp": _osdp,
    "serial": _serial,
}


def build_reader_bus(bus: Any, readers: Sequence[Any], sink: EventSink) -> CredentialReaderBus:
    """Construct the reader bus driver named by ``bus.driver``."""
    try:
        factory = READER_BUSES[bus.driver]
    except KeyError:
        raise ValueError(f"unknown reader driver {bus.driver!r}") from None
    return factory(bus, readers, sink)
