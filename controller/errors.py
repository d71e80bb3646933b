"""One error tree for warding, organised by what the caller can do."""

from __future__ import annotations

from dataclasses import dataclass

from drivers.errors import (
    CodecError,
    DeviceConnectionError,
    DeviceError,
    DeviceProtocolError,
    DeviceTimeoutError,
    WardingError,
)

__all__ = [
    "AlreadyRunningError",
    "CodecError",
    "CommandError",
    "ConfigError",
    "DaemonNotRunningError",
    "DeviceConnectionError",
    "DeviceError",
    "DeviceProtocolError",
    "DeviceTimeoutError",
    "JournalCorruptError",
    "JournalError",
    "Problem",
    "SocketPathError",
    "UsageError",
    "WardingError",
]


@dataclass(frozen=True)
class Problem:
    """One configuration problem: where (file and key path) and what was expected."""

    path: str
    message: str
    file: str = "<config>"

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        return f"{where}: {self.message}"


class ConfigError(WardingError):
    """The site configuration is invalid; fix the file. Carries one Problem per defect."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class SocketPathError(WardingError):
    """The control socket's path cannot be used (a file is there, no such directory): exit 2."""


class UsageError(WardingError):
    """A command or argument is malformed; the user must correct it (exit status 2)."""


class DaemonNotRunningError(WardingError):
    """The control socket is absent or refuses connections."""


class AlreadyRunningError(WardingError):
    """Another daemon already serves the control socket."""


class CommandError(WardingError):
    """The daemon rejected a control command (unknown door, bad arguments...)."""


class JournalError(WardingError):
    """The journal cannot be written or read."""


class JournalCorruptError(JournalError):
    """The journal hash chain is broken at a given row."""

    def __init__(self, seq: int, reason: str) -> None:
        self.seq = seq
        self.reason = reason
        super().__init__(f"journal row {seq}: {reason}")
