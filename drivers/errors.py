"""Root of warding's error tree and the errors raised at the driver boundary.

The root lives here, not in controller/, because drivers never import the controller;
controller.errors re-exports everything so callers have one place to import from.
"""

from __future__ import annotations


class WardingError(Exception):
    """Base of every error warding raises on purpose."""


class DeviceError(WardingError):
    """A device misbehaved or could not be reached."""


class DeviceConnectionError(DeviceError):
    """The link to a device is down; retrying later may succeed."""


class DeviceTimeoutError(DeviceError, TimeoutError):
    """A device did not answer in time."""


class DeviceProtocolError(DeviceError):
    """A device answered with a protocol exception or a malformed reply."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        self.code = code
        super().__init__(message)


class CodecError(WardingError, ValueError):
    """A frame could not be decoded or encoded."""
