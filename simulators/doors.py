"""Physical door model for the simulators: a lock on a relay, a contact, a REX button, a tamper.

Pure Python, no I/O: a ``SimDoor`` reads its lock relay from a board's coil and drives its inputs
on the board, so whatever speaks Modbus to that board sees a real door.

Physics:
- ``fail-secure`` lock (strike): unlocked iff its relay is energised (coil True);
  ``fail-safe`` lock (maglock): locked iff its relay is energised.
- contact input (after ``invert``) reads True while the door is OPEN;
  REX input True while the button is pressed; tamper input True while tampered.
- a person can pull the door open only while the lock is released, unless they force it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from controller.settings import DoorSettings, InputRef, LockType

__all__ = ["DoorBoard", "InputWire", "SimDoor"]


class DoorBoard(Protocol):
    """The part of a simulated board a door is wired to."""

    def read_coil(self, index: int) -> bool:
        """Return whether relay ``index`` is energised."""
        ...

    def set_input(self, index: int, value: bool) -> None:
        """Drive discrete input ``index``."""
        ...


@dataclass(frozen=True, slots=True)
class InputWire:
    """A door signal wired to a board input; ``invert`` for normally-closed wiring."""

    board: DoorBoard
    index: int
    invert: bool = False

    def drive(self, active: bool) -> None:
        """Put the signal's electrical value (``active`` XOR ``invert``) on the input."""
        self.board.set_input(self.index, active != self.invert)


class SimDoor:
    """A physical door: lock driven by a relay, contact, REX button and tamper switch."""

    def __init__(
        self,
        name: str,
        lock: LockType,
        relay_board: DoorBoard,
        relay_coil: int,
        *,
        contact: InputWire | None = None,
        rex: InputWire | None = None,
        tamper: InputWire | None = None,
    ) -> None:
        self.name = name
        self.lock = LockType(lock)
        self._relay_board = relay_board
        self._relay_coil = relay_coil
        self._contact = contact
        self._rex = rex
        self._tamper = tamper
        self._open = False
        self._rex_pressed = False
        self._tampered = False
        self.forced_count = 0
        """How many times the door was forced open while locked."""
        self._drive_all()

    @classmethod
    def from_settings(cls, settings: DoorSettings, boards: Mapping[str, DoorBoard]) -> SimDoor:
        """Wire a door as the site file describes it, to ``boards`` by board name."""

        def wire(ref: InputRef | None) -> InputWire | None:
            return None if ref is None else InputWire(boards[ref.board], ref.input, ref.invert)

        return cls(
            settings.name,
            settings.lock,
            boards[settings.relay.board],
            settings.relay.coil,
            contact=wire(settings.contact),
            rex=wire(settings.rex),
            tamper=wire(settings.tamper),
        )

    def __repr__(self) -> str:
        return f"SimDoor({self.name!r}, {self.lock.value})"

    @property
    def relay(self) -> bool:
        """True while the lock relay is energised."""
        return self._relay_board.read_coil(self._relay_coil)

    @property
    def locked(self) -> bool:
        """True while the lock holds the door."""
        energised = self.relay
        return energised if self.lock is LockType.FAIL_SAFE else not energised

    @property
    def is_open(self) -> bool:
        """True while the door is physically open."""
        return self._open

    @property
    def rex_pressed(self) -> bool:
        """True while the request-to-exit button is pressed."""
        return self._rex_pressed

    @property
    def tampered(self) -> bool:
        """True while the tamper switch is active."""
        return self._tampered

    def open(self, force: bool = False) -> bool:
        """Pull the door: it opens if the lock is released or ``force``; return whether open."""
        if self._open:
            return True
        if self.locked:
            if not force:
                return False
            self.forced_count += 1
        self._open = True
        self._drive_contact()
        return True

    def close(self) -> None:
        """Let the door close (a strike or maglock lets a closing door latch)."""
        self._open = False
        self._drive_contact()

    def press_rex(self) -> None:
        """Press and hold the request-to-exit button."""
        self._rex_pressed = True
        if self._rex is not None:
            self._rex.drive(True)

    def release_rex(self) -> None:
        """Release the request-to-exit button."""
        self._rex_pressed = False
        if self._rex is not None:
            self._rex.drive(False)

    async def push_rex(self, hold_s: float = 0.5) -> None:
        """Press the REX button for ``hold_s`` seconds, then release it (even if cancelled)."""
        self.press_rex()
        try:
            await asyncio.sleep(hold_s)
        finally:
            self.release_rex()

    def set_tamper(self, tampered: bool) -> None:
        """Open (True) or restore (False) the tamper switch."""
        self._tampered = bool(tampered)
        if self._tamper is not None:
            self._tamper.drive(self._tampered)

    def snapshot(self) -> dict[str, Any]:
        """Return the door's physical state as a JSON-friendly dict."""
        return {
            "lock": self.lock.value,
            "relay": self.relay,
            "locked": self.locked,
            "open": self._open,
            "rex": self._rex_pressed,
            "tamper": self._tampered,
            "forced": self.forced_count,
        }

    def _drive_contact(self) -> None:
        if self._contact is not None:
            self._contact.drive(self._open)

    def _drive_all(self) -> None:
        self._drive_contact()
        if self._rex is not None:
            self._rex.drive(self._rex_pressed)
        if self._tamper is not None:
            self._tamper.drive(self._tampered)
