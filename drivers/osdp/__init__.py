"""OSDP v2.2 control panel on libosdp (the only package that imports ``osdp``/``osdp_sys``)."""

from __future__ import annotations

from drivers.osdp.driver import (
    INDICATION_COMMANDS,
    KeyLoader,
    OsdpBusConfig,
    OsdpBusSpec,
    OsdpReaderBus,
    OsdpReaderConfig,
    OsdpReaderSpec,
)
from drivers.osdp.keys import SCBK_D, KeyFileError, load_scbk, write_scbk

__all__ = [
    "INDICATION_COMMANDS",
    "SCBK_D",
    "KeyFileError",
    "KeyLoader",
    "OsdpBusConfig",
    "OsdpBusSpec",
    "OsdpReaderBus",
    "OsdpReaderConfig",
    "OsdpReaderSpec",
    "load_scbk",
    "write_scbk",
]
