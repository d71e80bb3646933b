"""Role interfaces (typing.Protocol) and the events drivers emit into the controller's queue.

Drivers never import the controller: they report through these plain event records, and the
controller talks to them only through these protocols, so simulators and test doubles need no
inheritance.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable


class LinkState(StrEnum):
    """States of a device link supervisor."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    UP = "up"
    BACKOFF = "backoff"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class LinkChanged:
    """A device link went up or down."""

    device: str
    state: LinkState
    reason: str = ""


@dataclass(frozen=True, slots=True)
class InputsRead:
    """A full read of a board's discrete inputs; ``changed`` lists indexes that differ."""

    device: str
    values: tuple[bool, ...]
    changed: frozenset[int]


@dataclass(frozen=True, slots=True)
class CoilsRead:
    """A readback of a board's coils; ``mismatched`` are commanded coils that disagree."""

    device: str
    values: tuple[bool, ...]
    mismatched: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class DeviceFault:
    """A transaction failed: exception response, timeout, garbage, or readback mismatch."""

    device: str
    kind: str  # "exception" | "timeout" | "connection" | "mismatch" | "protocol"
    detail: str
    coils: frozenset[int] = frozenset()


DriverEvent = LinkChanged | InputsRead | CoilsRead | DeviceFault
EventSink = Callable[[DriverEvent], None]


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """Result of a coil write: which coils the readback confirmed and which it contradicted."""

    confirmed: frozenset[int]
    mismatched: frozenset[int]
    error: str = ""

    @property
    def ok(self) -> bool:
        """True when every requested coil was confirmed by readback."""
        return not self.mismatched and not self.error


@runtime_checkable
class RelayBoard(Protocol):
    """A relay/IO board: actuates door relays (coils) and reports door inputs."""

    name: str

    @property
    def link(self) -> LinkState:
        """Current link state."""
        ...

    async def run(self) -> None:
        """Supervise the link until cancelled: connect, poll, write, reconnect with backoff."""
        ...

    def command(self, coils: Mapping[int, bool]) -> asyncio.Future[WriteOutcome]:
        """Set coils (batched with other pending changes) and resolve once read back."""
        ...

    async def close(self) -> None:
        """Close the link; idempotent."""
        ...
