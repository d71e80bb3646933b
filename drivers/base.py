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
    """A readback of a board's coils; ``mismatched`` are commanded coils that disagree.

    ``pending``: coils with a newer command queued; their values here predate it and say
    nothing about it (the command's own readback will).
    """

    device: str
    values: tuple[bool, ...]
    mismatched: frozenset[int] = frozenset()
    pending: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class DeviceFault:
    """A transaction failed: exception response, timeout, garbage, or readback mismatch."""

    device: str
    kind: str  # "exception" | "timeout" | "connection" | "mismatch" | "protocol"
    detail: str
    coils: frozenset[int] = frozenset()


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


# -- credential readers ----------------------------------------------------------------------


class CardFraming(StrEnum):
    """How a reader delivered card data."""

    WIEGAND = "wiegand"  # ``data`` holds ``bits`` bits, MSB first, left-aligned, parity included
    UID = "uid"  # ``data`` is a raw card UID / serial number as read (byte order as sent)
    NUMBER = "number"  # ``text`` holds a decimal card number an ASCII reader already decoded


@dataclass(frozen=True, slots=True)
class CardRead:
    """A card was presented at ``reader``; decoding into a credential key is the controller's."""

    reader: str
    framing: CardFraming
    data: bytes = b""
    bits: int = 0
    text: str = ""


@dataclass(frozen=True, slots=True)
class KeypadRead:
    """Keys pressed at ``reader``'s keypad (digits, ``*``, ``#``), one entry per PIN or key."""

    reader: str
    keys: str


@dataclass(frozen=True, slots=True)
class ReaderStatus:
    """A reader's supervision state changed (online, tamper, secure channel)."""

    reader: str
    online: bool
    tamper: bool = False
    secure: bool | None = None  # None: the transport has no secure channel (serial readers)
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ReaderAlarm:
    """A reader security problem: secure-channel failure, clear-text reader, bad frame..."""

    reader: str
    kind: str  # "sc-failure" | "no-secure-channel" | "install-mode" | "malformed" | ...
    detail: str


class Indication(StrEnum):
    """Feedback shown on a reader's LED/buzzer."""

    GRANTED = "granted"
    DENIED = "denied"
    PIN_NEEDED = "pin-needed"
    LOCKDOWN = "lockdown"
    IDLE = "idle"


ReaderEvent = CardRead | KeypadRead | ReaderStatus | ReaderAlarm


@runtime_checkable
class CredentialReaderBus(Protocol):
    """One reader transport (an OSDP bus, a serial line) serving one or more named readers."""

    name: str
    readers: tuple[str, ...]

    async def run(self) -> None:
        """Serve until cancelled, emitting ReaderEvents to the sink given at construction."""
        ...

    def indicate(self, reader: str, indication: Indication) -> None:
        """Show feedback on ``reader`` (non-blocking; best effort)."""
        ...

    async def close(self) -> None:
        """Release the transport; idempotent."""
        ...


DriverEvent = LinkChanged | InputsRead | CoilsRead | DeviceFault | ReaderEvent
EventSink = Callable[[DriverEvent], None]
