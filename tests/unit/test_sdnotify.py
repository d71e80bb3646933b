"""SdNotifier against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.sdnotify import SdNotifier

_MAX_SUN_PATH = 107  # sizeof(sun_path) - 1 on Linux


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: a bound AF_UNIX datagram socket."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(5.0)

    @property
    def env_value(self) -> str:
        """What systemd would put into NOTIFY_SOCKET."""
        if self.address.startswith("\0"):
            return "@" + self.address[1:]
        return self.address

    def recv(self) -> bytes:
        return self.sock.recv(65536)

    def assert_nothing_pending(self) -> None:
        self.sock.settimeout(0.05)
        try:
            with pytest.raises(TimeoutError):
                self.sock.recv(65536)
        finally:
            self.sock.settimeout(5.0)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def short_dir(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, unless too long for sun_path (then a short directory under the temp root)."""
    if len(str(tmp_path / "notify.sock")) <= _MAX_SUN_PATH:
        yield tmp_path
        return
    short = Path(tempfile.mkdtemp(prefix="sdn-"))
    try:
        yield short
    finally:
        shutil.rmtree(short, ignore_errors=True)


@pytest.fixture
def systemd(short_dir: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(str(short_dir / "notify.sock"))
    yield fake
    fake.close()


@pytest.fixture
def notifier(systemd: FakeSystemd) -> Iterator[SdNotifier]:
    n = SdNotifier.from_env({"NOTIFY_SOCKET": systemd.env_value})
    yield n
    n.close()


# --- exact datagrams ---------------------------------------------------------------------------


def test_ready(systemd: FakeSystemd, notifier: SdNotifier) -> None:
    assert notifier.enabled
    assert notifier.ready() is True
    assert systemd.recv() == b"READY=1"


def test_ready_with_status(systemd: FakeSystemd, notifier: SdNotifier) -> None:
    assert notifier.ready("12 doors locked")
    assert systemd.recv() == b"READY=1\nSTATUS=12 doors locked"


def test_watchdog(systemd: FakeSystemd, notifier: SdNotifier) -> None:
    assert notifier.watchdog()
    assert systemd.recv() == b"WATCHDOG=1"


def test_stopping(systemd: FakeSystemd, notifier: SdNotifier) -> None:
    assert notifier.stopping()
    assert systemd.recv() == b"STOPPING=1"


def test_status(systemd: FakeSystemd, notifier: SdNotifier) -> None:
    assert notifier.status("lockdown: zone A")
    assert systemd.recv() == b"STATUS=lockdown: zone A"


def test_status_newlines_cannot_inject_fields(systemd: FakeSystemd, notifier: SdNotifier) -> None:
    assert notifier.status("ok\nREADY=1\r\n")
    assert systemd.recv() == b"STATUS=ok READY=1  "


def test_status_utf8(systemd: FakeSystemd, notifier: SdNotifier) -> None:
    assert notifier.status("Tür 3 verriegelt")
    assert systemd.recv() == "STATUS=Tür 3 verriegelt".encode()


def test_reloading_carries_monotonic_usec(systemd: FakeSystemd, notifier: SdNotifier) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = systemd.recv().split(b"\n")
    assert first == b"RELOADING=1"
    key, _, value = second.partition(b"=")
    assert key == b"MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_notify_many_fields_one_datagram(systemd: FakeSystemd, notifier: SdNotifier) -> None:
    assert notifier.notify("STATUS=a", "ERRNO=5", "EXTEND_TIMEOUT_USEC=1000000")
    assert systemd.recv() == b"STATUS=a\nERRNO=5\nEXTEND_TIMEOUT_USEC=1000000"
    systemd.assert_nothing_pending()


def test_each_call_is_its_own_datagram(systemd: FakeSystemd, notifier: SdNotifier) -> None:
    notifier.status("starting")
    notifier.ready()
    notifier.watchdog()
    assert [systemd.recv() for _ in range(3)] == [b"STATUS=starting", b"READY=1", b"WATCHDOG=1"]


@pytest.mark.parametrize("field", ["READY", "ready=1", "=1", "STATUS=a\nREADY=1", ""])
def test_malformed_field_is_a_programming_error(notifier: SdNotifier, field: str) -> None:
    with pytest.raises(ValueError, match="KEY=value"):
        notifier.notify(field)


def test_no_fields_sends_nothing(systemd: FakeSystemd, notifier: SdNotifier) -> None:
    assert notifier.notify() is False
    systemd.assert_nothing_pending()


def test_socket_kept_open_and_reused(systemd: FakeSystemd, notifier: SdNotifier) -> None:
    notifier.watchdog()
    first = notifier._sock
    assert first is not None
    notifier.watchdog()
    assert notifier._sock is first
    assert systemd.recv() == systemd.recv() == b"WATCHDOG=1"


def test_close_is_idempotent_and_reopens_lazily(systemd: FakeSystemd, notifier: SdNotifier) -> None:
    notifier.close()
    notifier.watchdog()
    notifier.close()
    notifier.close()
    assert notifier._sock is None
    assert notifier.watchdog()
    assert systemd.recv() == systemd.recv() == b"WATCHDOG=1"


def test_context_manager_closes(systemd: FakeSystemd) -> None:
    with SdNotifier.from_env({"NOTIFY_SOCKET": systemd.env_value}) as n:
        assert n.ready()
    assert n._sock is None
    assert systemd.recv() == b"READY=1"


# --- abstract namespace ------------------------------------------------------------------------


def test_abstract_namespace() -> None:
    name = f"warding-test-{os.getpid()}-{secrets.token_hex(6)}"
    fake = FakeSystemd("\0" + name)
    try:
        with SdNotifier.from_env({"NOTIFY_SOCKET": "@" + name}) as n:
            assert n.enabled
            assert n.ready("up")
        assert fake.recv() == b"READY=1\nSTATUS=up"
    finally:
        fake.close()


# --- not under systemd -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"NOTIFY_SOCKET": ""},
        {"NOTIFY_SOCKET": "@"},
        {"NOTIFY_SOCKET": "relative/notify"},
        {"NOTIFY_SOCKET": "vsock:2:1234"},
        {"WATCHDOG_USEC": "10000000"},
    ],
)
def test_without_notify_socket_everything_is_a_noop(env: dict[str, str]) -> None:
    n = SdNotifier.from_env(env)
    assert not n.enabled
    assert n.watchdog_interval_s() is None
    assert n.ready() is False
    assert n.ready("x") is False
    assert n.watchdog() is False
    assert n.stopping() is False
    assert n.status("x") is False
    assert n.reloading() is False
    assert n.notify("X=1") is False
    assert n._sock is None
    n.close()
    n.close()


def test_from_env_defaults_to_os_environ(
    systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", systemd.env_value)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    with SdNotifier.from_env() as n:
        assert n.watchdog_interval_s() == 2.0
        assert n.stopping()
    assert systemd.recv() == b"STOPPING=1"


# --- watchdog settings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usec", "interval"),
    [
        ("10000000", 5.0),
        ("1", 0.0000005),
        ("30000000", 15.0),
        ("0", None),
        ("-10000000", None),
        ("", None),
        ("ten", None),
        ("10s", None),
        (" 10000000", None),
        ("10000000\n", None),
        ("1e7", None),
        ("0x989680", None),
        ("\u0661\u0660", None),  # Arabic-Indic "10": int() would accept it
    ],
)
def test_watchdog_usec_parsing(systemd: FakeSystemd, usec: str, interval: float | None) -> None:
    n = SdNotifier.from_env({"NOTIFY_SOCKET": systemd.env_value, "WATCHDOG_USEC": usec})
    assert n.watchdog_interval_s() == interval


def test_watchdog_pid_matches(systemd: FakeSystemd) -> None:
    env = {
        "NOTIFY_SOCKET": systemd.env_value,
        "WATCHDOG_USEC": "10000000",
        "WATCHDOG_PID": str(os.getpid()),
    }
    assert SdNotifier.from_env(env).watchdog_interval_s() == 5.0


@pytest.mark.parametrize("pid", [str(os.getpid() + 1), "1", "0", "", "self", "-1"])
def test_watchdog_pid_mismatch_disables_watchdog(systemd: FakeSystemd, pid: str) -> None:
    env = {"NOTIFY_SOCKET": systemd.env_value, "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": pid}
    n = SdNotifier.from_env(env)
    assert n.watchdog_interval_s() is None
    assert n.enabled  # notifications still go to systemd, only the watchdog is not ours


@given(usec=st.text(), pid=st.one_of(st.none(), st.text()))
def test_from_env_never_raises(usec: str, pid: str | None) -> None:
    env = {"NOTIFY_SOCKET": "/nonexistent/notify", "WATCHDOG_USEC": usec}
    if pid is not None:
        env["WATCHDOG_PID"] = pid
    interval = SdNotifier.from_env(env).watchdog_interval_s()
    assert interval is None or interval > 0


# --- failures never raise ----------------------------------------------------------------------


def test_vanished_socket_does_not_raise(systemd: FakeSystemd, notifier: SdNotifier) -> None:
    assert notifier.ready()
    assert systemd.recv() == b"READY=1"
    systemd.close()
    Path(systemd.address).unlink()
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    assert notifier._sock is None


def test_socket_that_never_existed_does_not_raise(short_dir: Path) -> None:
    with SdNotifier.from_env({"NOTIFY_SOCKET": str(short_dir / "absent.sock")}) as n:
        assert n.enabled
        assert n.ready() is False
        assert n.watchdog() is False


def test_not_a_socket_does_not_raise(short_dir: Path) -> None:
    regular = short_dir / "file"
    regular.write_text("")
    with SdNotifier.from_env({"NOTIFY_SOCKET": str(regular)}) as n:
        assert n.ready() is False


def test_reconnects_when_systemd_recreates_its_socket(short_dir: Path) -> None:
    path = str(short_dir / "notify.sock")
    first = FakeSystemd(path)
    with SdNotifier.from_env({"NOTIFY_SOCKET": path}) as n:
        assert n.ready()
        assert first.recv() == b"READY=1"
        first.close()
        Path(path).unlink()
        second = FakeSystemd(path)
        try:
            assert n.watchdog() is True
            assert second.recv() == b"WATCHDOG=1"
        finally:
            second.close()


def test_full_receive_queue_does_not_block_forever(short_dir: Path) -> None:
    fake = FakeSystemd(str(short_dir / "notify.sock"))
    try:
        n = SdNotifier(os.fsencode(fake.address), send_timeout_s=0.01)
        with n:
            assert n.status("x" * 1024) is True
            # Nobody reads: the receive queue fills up and a send then times out.
            assert not all(n.status("x" * 1024) for _ in range(500))
    finally:
        fake.close()
