"""Control API wire format: one JSON object per line, both ways (pure, no I/O).

Requests carry ``cmd`` and, optionally, ``id`` (echoed back). Replies are
``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. See docs/control-api.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from controller.errors import WardingError

MAX_LINE = 64 * 1024
PROTOCOL_VERSION = 1


class ProtocolError(WardingError):
    """A request line is not a valid control request."""


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed control request."""

    cmd: str
    args: dict[str, Any]
    id: Any = None


def decode_request(line: bytes) -> Request:
    """Parse one request line; raise ProtocolError saying what is wrong."""
    if len(line) > MAX_LINE:
        raise ProtocolError(f"request longer than {MAX_LINE} bytes")
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as exc:  # bad JSON/UTF-8, >4300-digit ints, nesting
        raise ProtocolError(f"request is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("request must be a JSON object")
    cmd = obj.pop("cmd", None)
    if not isinstance(cmd, str) or not cmd:
        raise ProtocolError("request needs a string 'cmd'")
    req_id = obj.pop("id", None)
    return Request(cmd, obj, req_id)


def encode(obj: dict[str, Any]) -> bytes:
    """Encode one reply line."""
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"


def ok(req_id: Any = None, **fields: Any) -> dict[str, Any]:
    """A success reply."""
    out: dict[str, Any] = {"ok": True, **fields}
    if req_id is not None:
        out["id"] = req_id
    return out


def error(message: str, req_id: Any = None) -> dict[str, Any]:
    """An error reply."""
    out: dict[str, Any] = {"ok": False, "error": message}
    if req_id is not None:
        out["id"] = req_id
    return out


def arg(req: Request, name: str, kind: type, *, required: bool = True, default: Any = None) -> Any:
    """Fetch a typed argument or raise ProtocolError naming it."""
    if name not in req.args:
        if required:
            raise ProtocolError(f"'{req.cmd}' needs argument '{name}'")
        return default
    value = req.args[name]
    if value is None and not required:
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"argument '{name}' must be {kind.__name__}")
    return value
