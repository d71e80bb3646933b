"""The credential store, the site secret and CSV import/export, on real SQLite files."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.access.csvio import (
    EXPORT_COLUMNS,
    ImportFileError,
    export_csv,
    import_csv,
    parse_validity,
)
from controller.access.model import (
    ALWAYS,
    CardholderState,
    Interval,
    PinCheck,
    Privilege,
    Schedule,
)
from controller.access.secret import (
    SecretError,
    load_or_create_secret,
    load_secret,
    secret_fingerprint,
)
from controller.access.store import (
    PIN_CREDENTIAL_ID,
    ConflictError,
    CredentialStore,
    InvalidValueError,
    NotFoundError,
    StoreError,
    card_entry,
    duress_pin,
    mask_key,
)

ROOT = Path(__file__).resolve().parents[2]
OFFICE = Schedule("office", (Interval(0, 8 * 60, 18 * 60),))
CARD = "h10301:201:48213"
CARD2 = "uid:04A1B2C3D4E5F6"
PIN = "73915"

# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def secret(tmp_path: Path) -> bytes:
    return load_or_create_secret(tmp_path / "etc" / "site.secret")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "credentials.db"


@pytest.fixture
def store(db_path: Path, secret: bytes) -> Iterator[CredentialStore]:
    s = CredentialStore.open(
        db_path, secret, schedules={"office": OFFICE}, duress="last-digit-plus-one"
    )
    yield s
    s.close()


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def file_bytes(db_path: Path) -> bytes:
    """Everything SQLite keeps for this store: the file, its WAL and shared memory."""
    out = b""
    for suffix in ("", "-wal", "-shm"):
        p = db_path.with_name(db_path.name + suffix)
        if p.exists():
            out += p.read_bytes()
    return out


# --------------------------------------------------------------------------- secret file


def test_secret_is_created_private_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "site.secret"
    first = load_or_create_secret(path)
    assert len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_text() == first.hex() + "\n"
    assert load_or_create_secret(path) == first
    assert load_secret(path) == first
    assert len(secret_fingerprint(first)) == 16
    assert secret_fingerprint(first) != secret_fingerprint(bytes(32))


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644, 0o660])
def test_secret_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "site.secret"
    load_or_create_secret(path)
    path.chmod(mode)
    with pytest.raises(SecretError, match=f"mode {mode:04o}.*chmod 600"):
        load_or_create_secret(path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "malformed"),
        (b"00" * 31 + b"\n", "malformed"),
        (b"00" * 33 + b"\n", "malformed"),
        (b"zz" * 32 + b"\n", "malformed"),
        (b"00" * 32 + b"\n\n", "malformed"),
        (b"\xff" * 64, "malformed"),
    ],
)
def test_secret_of_wrong_size_or_format_is_refused(
    tmp_path: Path, content: bytes, match: str
) -> None:
    path = tmp_path / "site.secret"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, content)
    os.close(fd)
    with pytest.raises(SecretError, match=match):
        load_secret(path)


def test_secret_without_newline_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "site.secret"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"ab" * 32)
    os.close(fd)
    assert load_secret(path) == b"\xab" * 32


def test_secret_missing_symlink_or_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="does not exist"):
        load_secret(tmp_path / "absent")
    real = tmp_path / "real.secret"
    load_or_create_secret(real)
    link = tmp_path / "link.secret"
    link.symlink_to(real)
    with pytest.raises(SecretError, match="cannot open"):
        load_secret(link)
    with pytest.raises(SecretError, match=r"cannot open|not a regular file"):
        load_secret(tmp_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_secret_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "site.secret"
    load_or_create_secret(path)
    os.chown(path, 12345, -1)
    with pytest.raises(SecretError, match="owned by uid 12345"):
        load_secret(path)


# --------------------------------------------------------------------------- opening


def test_store_file_mode_schema_and_reopen(db_path: Path, secret: bytes) -> None:
    with CredentialStore.open(db_path, secret) as s:
        s.add_cardholder("Ada")
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o640
    conn = sqlite3.connect(db_path)
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    assert meta["schema_version"] == "1"
    assert meta["secret_fingerprint"] == secret_fingerprint(secret)
    with CredentialStore.open(db_path, secret) as s:
        assert s.counts()["cardholders"] == 1


def test_store_refuses_another_secret(db_path: Path, secret: bytes) -> None:
    CredentialStore.open(db_path, secret).close()
    with pytest.raises(StoreError, match="another site secret"):
        CredentialStore.open(db_path, bytes(32))


def test_store_refuses_bad_secret_and_foreign_files(tmp_path: Path, secret: bytes) -> None:
    with pytest.raises(StoreError, match="32 bytes"):
        CredentialStore.open(tmp_path / "a.db", b"short")
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a warding credential store"):
        CredentialStore.open(other, secret)


def test_store_refuses_a_file_that_is_not_sqlite(tmp_path: Path, secret: bytes) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open credential store"):
        CredentialStore.open(junk, secret)


def test_store_refuses_unknown_schema_version(db_path: Path, secret: bytes) -> None:
    CredentialStore.open(db_path, secret).close()
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="unsupported schema_version '99'"):
        CredentialStore.open(db_path, secret)


def test_close_is_idempotent_and_final(store: CredentialStore) -> None:
    store.close()
    store.close()
    assert store.closed
    with pytest.raises(StoreError, match="closed"):
        store.lookup(CARD)
    with pytest.raises(StoreError, match="closed"):
        store.add_cardholder("x")


# --------------------------------------------------------------------------- secrets at rest


def test_no_card_number_or_pin_in_the_database_files(store: CredentialStore, db_path: Path) -> None:
    ada = store.add_cardholder("Ada", pin=PIN)
    store.add_credential(ada, CARD)
    store.add_credential(ada, CARD2)
    store.add_credential(ada, "number:9182736455")
    csv_path = write_csv(
        db_path.parent / "in.csv", "name,card,pin\nBob,h10304:4321:271828,86420713\n"
    )
    assert import_csv(store, csv_path).committed
    assert store.lookup(CARD) is not None
    store.close()
    data = file_bytes(db_path)
    assert b"Ada" in data  # the file is readable as such; the secrets are not in it
    for needle in (
        CARD,
        "48213",
        PIN,
        duress_pin(PIN),
        CARD2,
        "A1B2C3D4",
        "a1b2c3d4",
        "9182736455",
        "271828",
        "86420713",
    ):
        assert needle.encode() not in data, needle
        assert needle.encode("utf-16-le") not in data, needle
    assert bytes.fromhex("04A1B2C3D4E5F6") not in data


def test_hash_inputs_are_as_documented(store: CredentialStore, secret: bytes) -> None:
    import hashlib
    import hmac

    assert store.card_hash(CARD) == hmac.new(secret, b"card:" + CARD.encode(), "sha256").digest()
    assert store.pin_hash(PIN) == hmac.new(secret, b"pin:" + PIN.encode(), hashlib.sha256).digest()


def test_errors_show_only_masked_cards(store: CredentialStore) -> None:
    ada = store.add_cardholder("Ada")
    store.add_credential(ada, CARD)
    with pytest.raises(ConflictError) as info:
        store.add_credential(ada, CARD)
    assert "48213" not in str(info.value)
    assert "h10301:201:***13" in str(info.value)


# --------------------------------------------------------------------------- keys


def test_card_entry_canonical_and_masked() -> None:
    assert card_entry(CARD) == (CARD, "h10301", "h10301:201:***13")
    assert card_entry(CARD2).format == "uid"
    assert "D4E5" not in card_entry(CARD2).masked
    assert card_entry("piv:00112233445566") == (
        "piv:00112233445566",
        "piv",
        "piv:************66",
    )
    with pytest.raises(InvalidValueError, match="canonical form"):
        card_entry("uid:04a1b2c3")  # the reader produces upper-case hex
    with pytest.raises(InvalidValueError, match="canonical form"):
        card_entry("26:201:48213")
    with pytest.raises(InvalidValueError, match="facility"):
        card_entry("h10301:999:1")
    for bad in ("", "has space:1", "x:", "h10301:**:***13"):
        with pytest.raises(InvalidValueError):
            card_entry(bad)


def test_mask_key_never_shows_short_numbers() -> None:
    assert mask_key("x:1234") == "x:****"
    assert mask_key("x:12345") == "x:***45"
    assert mask_key("x:12:345") == "x:**:*45"
    assert mask_key("abcdef") == "****ef"


def test_duress_pin_wraps_nine_to_zero() -> None:
    assert duress_pin("1234") == "1235"
    assert duress_pin("1239") == "1230"
    assert duress_pin("00000000") == "00000001"


# --------------------------------------------------------------------------- lookups


def test_lookup_returns_credential_with_cardholder_and_levels(store: CredentialStore) -> None:
    store.add_level("staff", ["front", "lab"], "office")
    store.add_level("lobby", ["front"])
    ada = store.add_cardholder("Ada", pin=PIN, privileges=[Privilege.OVERRIDE, "all-clear"])
    store.grant_level(ada, "staff")
    store.grant_level(ada, "lobby")
    cred_id = store.add_credential(ada, CARD)
    found = store.lookup(CARD)
    assert found is not None
    assert found.id == cred_id
    assert found.display == "h10301:201:***13"
    assert found.state is CardholderState.ACTIVE
    holder = found.cardholder
    assert (holder.id, holder.name, holder.has_pin) == (ada, "Ada", True)
    assert holder.privileges == {Privilege.OVERRIDE, Privilege.ALL_CLEAR}
    assert [level.name for level in holder.levels] == ["lobby", "staff"]
    lobby, staff = holder.levels
    assert staff.doors == {"front", "lab"}
    assert staff.schedule == OFFICE
    assert lobby.schedule == ALWAYS
    assert store.lookup("h10301:201:48214") is None
    assert store.get_cardholder(ada) == holder


@pytest.mark.parametrize("state", list(CardholderState))
def test_lookup_reports_each_state(store: CredentialStore, state: CardholderState) -> None:
    ada = store.add_cardholder("Ada", state=state)
    bob = store.add_cardholder("Bob")
    store.add_credential(ada, CARD)
    cred = store.add_credential(bob, CARD2, state=state)
    found = store.lookup(CARD)
    assert found is not None
    assert found.cardholder.state is state
    assert found.state is CardholderState.ACTIVE
    found = store.lookup(CARD2)
    assert found is not None
    assert (found.id, found.state, found.cardholder.state) == (
        cred,
        state,
        CardholderState.ACTIVE,
    )


def test_revocation_takes_effect_on_the_next_lookup(
    store: CredentialStore, db_path: Path, secret: bytes
) -> None:
    ada = store.add_cardholder("Ada")
    cred = store.add_credential(ada, CARD)
    store.add_credential(ada, CARD2)
    found = store.lookup(CARD)
    assert found is not None
    assert found.state is CardholderState.ACTIVE
    assert store.revoke_key(CARD) is True
    found = store.lookup(CARD)
    assert found is not None
    assert found.state is CardholderState.REVOKED
    assert store.revoke_key("h10301:1:1") is False
    # a change committed by another connection (wardctl, another process) is seen at once
    with CredentialStore.open(db_path, secret) as other:
        other.set_credential_state(cred, CardholderState.ACTIVE)
        other.set_cardholder_state(ada, CardholderState.LOST)
    found = store.lookup(CARD)
    assert found is not None
    assert (found.state, found.cardholder.state) == (
        CardholderState.ACTIVE,
        CardholderState.LOST,
    )
    store.set_credential_state(cred, "disabled")
    assert store.get_credential(cred).state is CardholderState.DISABLED


def test_validity_windows_round_trip_with_times_and_offsets(store: CredentialStore) -> None:
    plus2 = timezone(timedelta(hours=2))
    berlin = ZoneInfo("Europe/Berlin")
    start = datetime(2025, 3, 30, 1, 59, 59, 250_000, tzinfo=berlin)  # just before DST
    end = datetime(2025, 10, 26, 23, 30, tzinfo=plus2)
    ada = store.add_cardholder("Ada", valid_from=start, valid_until=end)
    cred = store.add_credential(
        ada, CARD, valid_from=datetime(2025, 1, 1, 8, 0, tzinfo=UTC), valid_until=None
    )
    found = store.lookup(CARD)
    assert found is not None
    holder = found.cardholder
    assert holder.valid_from == start
    assert holder.valid_from is not None
    assert holder.valid_from.utcoffset() == timedelta(hours=1)
    assert holder.valid_until == end
    assert holder.valid_until is not None
    assert holder.valid_until.utcoffset() == timedelta(hours=2)
    assert found.valid_from == datetime(2025, 1, 1, 8, 0, tzinfo=UTC)
    assert found.valid_until is None
    store.update_credential(cred, valid_until=datetime(2026, 1, 1, tzinfo=UTC))
    assert store.get_credential(cred).valid_until == datetime(2026, 1, 1, tzinfo=UTC)
    store.update_cardholder(ada, valid_from=None)
    assert store.get_cardholder(ada).valid_from is None


def test_validity_window_checks(store: CredentialStore) -> None:
    t = datetime(2025, 1, 1, tzinfo=UTC)
    with pytest.raises(InvalidValueError, match="timezone-aware"):
        store.add_cardholder("Ada", valid_from=datetime(2025, 1, 1))
    with pytest.raises(InvalidValueError, match="after valid_from"):
        store.add_cardholder("Ada", valid_from=t, valid_until=t)
    ada = store.add_cardholder("Ada", valid_until=t)
    with pytest.raises(InvalidValueError, match="after valid_from"):
        store.update_cardholder(ada, valid_from=t + timedelta(seconds=1))


def test_unknown_schedule_never_matches_and_schedules_can_be_reloaded(
    store: CredentialStore,
) -> None:
    store.add_level("nights", ["back"], "night-shift")
    ada = store.add_cardholder("Ada")
    store.grant_level(ada, "nights")
    store.add_credential(ada, CARD)
    found = store.lookup(CARD)
    assert found is not None
    (level,) = found.cardholder.levels
    assert level.schedule == Schedule("night-shift", ())
    night = Schedule("night-shift", (Interval(0, 22 * 60, 1440),))
    store.set_schedules({"night-shift": night})
    found = store.lookup(CARD)
    assert found is not None
    assert found.cardholder.levels[0].schedule == night
    assert store.level_schedule_names() == {"nights": "night-shift"}


def test_level_changes_show_on_the_next_lookup(
    store: CredentialStore, db_path: Path, secret: bytes
) -> None:
    store.add_level("staff", ["front"], "office")
    ada = store.add_cardholder("Ada")
    store.grant_level(ada, "staff")
    store.grant_level(ada, "staff")  # idempotent
    store.add_credential(ada, CARD)

    def doors() -> set[str]:
        found = store.lookup(CARD)
        assert found is not None
        return {d for level in found.cardholder.levels for d in level.doors}

    assert doors() == {"front"}
    store.update_level("staff", doors=["front", "lab"])
    assert doors() == {"front", "lab"}
    with CredentialStore.open(db_path, secret) as other:  # another connection
        other.update_level("staff", doors=["vault"], schedule="always")
    assert doors() == {"vault"}
    assert store.list_levels()[0].schedule == ALWAYS
    assert store.revoke_level(ada, "staff") is True
    assert store.revoke_level(ada, "staff") is False
    assert doors() == set()
    store.grant_level(ada, "staff")
    assert store.remove_level("staff") is True
    assert store.remove_level("staff") is False
    assert doors() == set()
    assert store.list_levels() == []


def test_level_errors(store: CredentialStore) -> None:
    store.add_level("staff", ["front"])
    with pytest.raises(ConflictError, match="already exists"):
        store.add_level("staff", ["lab"])
    with pytest.raises(InvalidValueError, match="door name"):
        store.add_level("other", ["Front Door"])
    with pytest.raises(InvalidValueError, match="level name"):
        store.add_level("", ["front"])
    with pytest.raises(NotFoundError, match="no access level 'nope'"):
        store.grant_level(1, "nope")
    with pytest.raises(NotFoundError, match="no cardholder 99"):
        store.grant_level(99, "staff")


# --------------------------------------------------------------------------- PINs


def test_check_pin_ok_bad_duress(store: CredentialStore) -> None:
    ada = store.add_cardholder("Ada", pin="1239")
    bob = store.add_cardholder("Bob")
    assert store.check_pin(ada, "1239") is PinCheck.OK
    assert store.check_pin(ada, "1230") is PinCheck.DURESS  # 9 + 1 wraps to 0
    assert store.check_pin(ada, "1231") is PinCheck.BAD
    assert store.check_pin(ada, "1238") is PinCheck.BAD
    assert store.check_pin(ada, "12") is PinCheck.BAD
    assert store.check_pin(ada, "12a9") is PinCheck.BAD
    assert store.check_pin(bob, "1239") is PinCheck.BAD  # Bob has no PIN
    assert store.check_pin(999, "1239") is PinCheck.BAD


def test_duress_off_makes_the_duress_pin_a_bad_pin(db_path: Path, secret: bytes) -> None:
    with CredentialStore.open(db_path, secret, duress="off") as s:
        ada = s.add_cardholder("Ada", pin="4321")
        assert s.duress == "off"
        assert s.check_pin(ada, "4321") is PinCheck.OK
        assert s.check_pin(ada, "4322") is PinCheck.BAD
        assert s.lookup_pin("4322") is None
        assert s.match_pin("4321") is not None
    # switching the scheme on later needs no re-enrolment
    with CredentialStore.open(db_path, secret, duress="last-digit-plus-one") as s:
        assert s.check_pin(ada, "4322") is PinCheck.DURESS
    with pytest.raises(InvalidValueError, match="duress scheme"):
        CredentialStore.open(db_path, secret, duress="reverse")  # type: ignore[arg-type]


def test_lookup_pin_for_pin_only_doors(store: CredentialStore) -> None:
    store.add_level("lab", ["lab"])
    ada = store.add_cardholder("Ada", pin="246810")
    store.grant_level(ada, "lab")
    cred = store.lookup_pin("246810")
    assert cred is not None
    assert cred.id == PIN_CREDENTIAL_ID
    assert cred.display == "pin"
    assert cred.state is CardholderState.ACTIVE
    assert cred.cardholder == store.get_cardholder(ada)
    match = store.match_pin("246811")
    assert match is not None
    assert (match.credential.cardholder.id, match.check) == (ada, PinCheck.DURESS)
    assert store.lookup_pin("246811") == cred
    assert store.lookup_pin("246812") is None
    assert store.lookup_pin("24681") is None
    assert store.lookup_pin("not a pin") is None


def test_pins_are_unique_and_keep_the_duress_neighbour_free(store: CredentialStore) -> None:
    ada = store.add_cardholder("Ada", pin="5550")
    with pytest.raises(ConflictError, match="PIN in use: same as another cardholder's PIN"):
        store.add_cardholder("Bob", pin="5550")
    with pytest.raises(ConflictError, match="only by one in the last digit"):
        store.add_cardholder("Bob", pin="5551")  # Ada's duress PIN
    with pytest.raises(ConflictError, match="only by one in the last digit"):
        store.add_cardholder("Bob", pin="5559")  # Bob's duress PIN would be Ada's PIN
    assert store.counts()["cardholders"] == 1  # the failed adds left nothing behind
    dan = store.add_cardholder("Dan", pin="8080")
    with pytest.raises(ConflictError):
        store.update_cardholder(dan, name="Daniel", pin="5550")
    assert store.get_cardholder(dan).name == "Dan"  # the whole update was rolled back
    assert store.check_pin(dan, "8080") is PinCheck.OK
    store.delete_cardholder(dan)
    bob = store.add_cardholder("Bob", pin="5553")
    assert store.check_pin(bob, "5553") is PinCheck.OK
    # changing a PIN frees the old one (and its duress neighbour)
    store.update_cardholder(ada, pin="777777")
    carol = store.add_cardholder("Carol", pin="5551")
    assert store.check_pin(carol, "5551") is PinCheck.OK
    assert store.check_pin(ada, "5550") is PinCheck.BAD
    match = store.match_pin("5550")
    assert match is None
    # a cardholder may set the PIN they already have
    store.update_cardholder(carol, pin="5551")
    store.update_cardholder(carol, pin=None)
    assert store.get_cardholder(carol).has_pin is False
    assert store.lookup_pin("5551") is None
    with pytest.raises(InvalidValueError, match="4 to 8 digits"):
        store.add_cardholder("Dan", pin="123")
    with pytest.raises(InvalidValueError, match="4 to 8 digits"):
        store.update_cardholder(bob, pin="123456789")
    with pytest.raises(InvalidValueError, match="4 to 8 digits"):
        store.add_cardholder("Dan", pin="١٢٣٤")  # non-ASCII digits


# --------------------------------------------------------------------------- management


def test_cardholder_management(store: CredentialStore) -> None:
    ada = store.add_cardholder("Ada Lovelace")
    bob = store.add_cardholder("Bob 100%_sure", state="disabled")
    store.update_cardholder(ada, name="Ada King", privileges=["lockdown"])
    holder = store.get_cardholder(ada)
    assert (holder.name, holder.privileges) == ("Ada King", frozenset({Privilege.LOCKDOWN}))
    assert [h.id for h in store.find_cardholders("king")] == [ada]
    assert [h.id for h in store.find_cardholders("100%_")] == [bob]
    assert [h.id for h in store.find_cardholders("%")] == [bob]
    assert [h.id for h in store.find_cardholders(state="disabled")] == [bob]
    assert [h.id for h in store.find_cardholders(limit=1)] == [ada]
    assert [h.id for h in store.find_cardholders(after_id=ada)] == [bob]
    with pytest.raises(NotFoundError):
        store.get_cardholder(999)
    with pytest.raises(NotFoundError):
        store.update_cardholder(999, name="x")
    with pytest.raises(InvalidValueError, match="unknown state"):
        store.set_cardholder_state(ada, "gone")
    with pytest.raises(InvalidValueError, match="unknown privilege"):
        store.update_cardholder(ada, privileges=["admin"])
    with pytest.raises(InvalidValueError, match="name is empty"):
        store.add_cardholder("  ")
    with pytest.raises(InvalidValueError, match="control"):
        store.add_cardholder("Ada\nKing")


def test_credential_management(store: CredentialStore) -> None:
    ada = store.add_cardholder("Ada", pin="1357")
    bob = store.add_cardholder("Bob")
    c1 = store.add_credential(ada, CARD)
    c2 = store.add_credential(ada, CARD2, valid_until=datetime(2030, 1, 1, tzinfo=UTC))
    c3 = store.add_credential(bob, "number:42", format="number", masked="number:**")
    assert [c.id for c in store.list_credentials(ada)] == [c1, c2]
    assert [c.id for c in store.list_credentials()] == [c1, c2, c3]
    assert [c.id for c in store.list_credentials(after_id=c1, limit=1)] == [c2]
    info = store.get_credential(c3)
    assert (info.cardholder_id, info.format, info.display) == (bob, "number", "number:**")
    with pytest.raises(ConflictError, match="already enrolled"):
        store.add_credential(bob, CARD)
    with pytest.raises(NotFoundError):
        store.add_credential(999, "number:43")
    with pytest.raises(NotFoundError):
        store.get_credential(999)
    assert store.delete_credential(c3) is True
    assert store.delete_credential(c3) is False
    assert store.lookup("number:42") is None
    assert store.counts() == {"cardholders": 2, "credentials": 2, "pins": 1, "levels": 0}
    store.delete_cardholder(ada)
    assert store.lookup(CARD) is None
    assert store.lookup_pin("1357") is None
    assert store.counts() == {"cardholders": 1, "credentials": 0, "pins": 0, "levels": 0}
    store.add_cardholder("Carol", pin="1357")  # the PIN is free again
    with pytest.raises(NotFoundError):
        store.delete_cardholder(ada)


def test_lookups_from_many_threads_while_writing(store: CredentialStore) -> None:
    ada = store.add_cardholder("Ada")
    keys = [f"h10301:7:{n}" for n in range(50)]
    for k in keys:
        store.add_credential(ada, k)
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(20):
                for k in keys:
                    assert store.lookup(k) is not None
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for n in range(50):
        store.add_credential(ada, f"h10301:8:{n}")
    for t in threads:
        t.join()
    assert errors == []
    assert store.counts()["credentials"] == 100


# --------------------------------------------------------------------------- CSV import


def test_import_csv_success(store: CredentialStore, tmp_path: Path) -> None:
    store.add_level("staff", ["front", "lab"], "office")
    store.add_level("night", ["back"])
    path = write_csv(
        tmp_path / "in.csv",
        "\ufeffName,Card,PIN,valid_from,valid_until,state,levels,privileges\n"
        "Ada,h10301:12:34567,1234,2025-01-01,2025-12-31,active,staff;night,override;all-clear\n"
        '"King, Bob",uid:04:a1:b2:c3 ; 26:1:2,,2025-02-01T08:30,'
        "2025-02-01T17:00:00+01:00,DISABLED,,\n"
        "\n"
        "Carol,,24680,,,,staff,\n",
    )
    progress: list[tuple[int, int]] = []
    report = import_csv(
        store,
        path,
        timezone="Europe/Berlin",
        progress=lambda done, total: progress.append((done, total)),
    )
    assert report.committed, report.rejected
    assert report.ok
    assert (report.rows, report.cardholders, report.credentials) == (3, 3, 3)
    assert report.rejected == ()
    assert report.rejected_count == 0
    assert "imported 3 cardholders and 3 credentials" in report.summary()
    assert progress[-1] == (3, 3)
    assert set(report.phase_s) >= {"read", "add", "check", "insert", "commit"}

    ada = store.lookup("h10301:12:34567")
    assert ada is not None
    berlin = ZoneInfo("Europe/Berlin")
    assert ada.cardholder.valid_from == datetime(2025, 1, 1, tzinfo=berlin)
    assert ada.cardholder.valid_until == datetime(2026, 1, 1, tzinfo=berlin)  # whole last day
    assert [level.name for level in ada.cardholder.levels] == ["night", "staff"]
    assert ada.cardholder.privileges == {Privilege.OVERRIDE, Privilege.ALL_CLEAR}
    assert store.check_pin(ada.cardholder.id, "1234") is PinCheck.OK
    bob = store.lookup("uid:04A1B2C3")
    assert bob is not None
    assert bob.cardholder.name == "King, Bob"
    assert bob.cardholder.state is CardholderState.DISABLED
    assert bob.cardholder.valid_from == datetime(2025, 2, 1, 8, 30, tzinfo=berlin)
    assert bob.cardholder.valid_until == datetime(
        2025, 2, 1, 17, 0, tzinfo=timezone(timedelta(hours=1))
    )
    assert store.lookup("h10301:1:2") == bob.__class__(
        id=store.lookup("h10301:1:2").id,  # type: ignore[union-attr]
        cardholder=bob.cardholder,
        display="h10301:1:***",
    )
    carol = store.lookup_pin("24680")
    assert carol is not None
    assert carol.cardholder.name == "Carol"


def test_import_is_all_or_nothing_and_reports_every_bad_line(
    store: CredentialStore, tmp_path: Path
) -> None:
    store.add_level("staff", ["front"])
    ada = store.add_cardholder("Ada", pin="1000")
    store.add_credential(ada, "h10301:1:1")
    before = store.counts()
    path = write_csv(
        tmp_path / "bad.csv",
        "name,card,pin,valid_from,valid_until,state,levels,privileges\n"
        "Good One,h10301:2:2,2000,,,,staff,\n"  # 2
        ",h10301:2:3,,,,,,\n"  # 3
        "Bad Card,h10301:300:1,,,,,,\n"  # 4
        "Dup In Store,h10301:1:1,,,,,,\n"  # 5
        "Dup In File,h10301:2:2,,,,,,\n"  # 6
        "Bad Pin,,12a4,,,,,\n"  # 7
        "Pin Taken,,1000,,,,,\n"  # 8
        "Pin Neighbour,,2001,,,,,\n"  # 9
        "Bad Date,,,2025-13-01,yesterday,,,\n"  # 10
        "Bad Window,,,2025-02-01,2025-01-01,,,\n"  # 11
        "Bad State,,,,,gone,,\n"  # 12
        "Bad Level,,,,,,staff;nope,\n"  # 13
        "Bad Privilege,,,,,,,root\n"  # 14
        "Too Many,,,,,,,,extra\n"  # 15
        'Twice,"h10301:9:9;\nh10301:9:9",,,,,,\n'  # 16-17 (a quoted newline)
        "Masked,h10301:2:***67,,,,,,\n"  # 18
        "Unknown Format,pxq:12,,,,,,\n"  # 19
        "Fine,h10301:5:5,5000,,,,,\n",  # 20
    )
    report = import_csv(store, path)
    assert not report.committed
    assert (report.cardholders, report.credentials) == (0, 0)
    assert store.counts() == before
    assert store.lookup("h10301:2:2") is None
    assert store.lookup("h10301:5:5") is None
    assert store.lookup_pin("5000") is None
    got = {r.line: r.reason for r in report.rejected}
    assert sorted(got) == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 19]
    assert report.rejected_count == 16
    assert report.rows == 18
    assert got[3] == "name is empty"
    assert got[4].startswith("bad card: h10301 facility code must be 0..255")
    assert "300" not in got[4]
    assert got[5].startswith("duplicate card: h10301:1:*** is already enrolled (credential ")
    assert got[6] == "duplicate card: h10301:2:*** is the same card as line 2"
    assert got[7] == "bad PIN: must be 4 to 8 digits"
    assert got[8] == "PIN in use: same as another cardholder's PIN"
    assert got[9] == (
        "PIN in use: it differs from the PIN of line 2 only by one in the last digit, "
        "which the duress scheme reserves"
    )
    assert "bad valid_from '2025-13-01'" in got[10]
    assert "bad valid_until 'yesterday'" in got[10]
    assert got[11] == "valid_until is not after valid_from"
    assert got[12].startswith("bad state 'gone': expected active, disabled, lost, revoked")
    assert got[13].startswith("unknown level 'nope'")
    assert got[14].startswith("unknown privilege 'root'")
    assert got[15] == "expected 8 fields, found 9"
    assert got[16] == "duplicate card: h10301:9:*** is listed twice in the row"
    assert got[18].startswith("card is masked: an export cannot be re-imported")
    assert got[19].startswith("bad card: unknown card format")
    assert "nothing imported: 16 of 18 rows rejected" in report.summary()
    # the same file with the bad rows removed goes in
    lines = path.read_text().split("\n")
    good = "\n".join([lines[0], lines[1], lines[-2]]) + "\n"
    report = import_csv(store, write_csv(tmp_path / "good.csv", good))
    assert report.committed
    assert store.lookup_pin("2000") is not None


def test_import_lists_at_most_max_listed_but_counts_all(
    store: CredentialStore, tmp_path: Path
) -> None:
    rows = "".join(f"P{i},h10301:1:{i},,,,,,nope\n" for i in range(30))
    path = write_csv(
        tmp_path / "x.csv", "name,card,pin,valid_from,valid_until,state,levels,privileges\n" + rows
    )
    report = import_csv(store, path, max_listed=5)
    assert report.rejected_count == 30
    assert [r.line for r in report.rejected] == [2, 3, 4, 5, 6]
    assert "(25 more not listed)" in report.summary()
    # conflicts found by the store are capped the same way
    store.add_cardholder("A")
    first = write_csv(
        tmp_path / "y.csv", "name,card\n" + "".join(f"P{i},number:{i}\n" for i in range(30))
    )
    assert import_csv(store, first).committed
    report = import_csv(store, first, max_listed=3)
    assert report.rejected_count == 30
    assert [r.line for r in report.rejected] == [2, 3, 4]
    assert all("already enrolled" in r.reason for r in report.rejected)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "empty"),
        (b"card,pin\nh10301:1:1,1234\n", "'name' column is required"),
        (b"name,badge\nAda,1\n", "unknown column.*'badge'"),
        (b"name,name\nAda,Ada\n", "column.*name twice"),
        (b"name\nAda\nB\xe9a\n", "line 3: not valid UTF-8"),
        (b'name,card\nAda,"h10301:1:1\n', "line"),
        (
            b"cardholder_id,name,card_masked\n1,Ada,h10301:1:***\n",
            "is an export.*cannot be imported",
        ),
    ],
)
def test_import_file_errors(
    store: CredentialStore, tmp_path: Path, content: bytes, match: str
) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(content)
    with pytest.raises(ImportFileError, match=match):
        import_csv(store, path)
    assert store.counts()["cardholders"] == 0


def test_import_missing_file_and_zone(store: CredentialStore, tmp_path: Path) -> None:
    with pytest.raises(ImportFileError, match="cannot read"):
        import_csv(store, tmp_path / "absent.csv")
    path = write_csv(tmp_path / "a.csv", "name\nAda\n")
    with pytest.raises(ImportFileError, match="unknown time zone"):
        import_csv(store, path, timezone="Mars/Olympus")


def test_parse_validity() -> None:
    utc = ZoneInfo("UTC")
    assert parse_validity("2025-06-01", utc, end=False) == datetime(2025, 6, 1, tzinfo=utc)
    assert parse_validity("2025-06-01", utc, end=True) == datetime(2025, 6, 2, tzinfo=utc)
    assert parse_validity("2025-06-01T07:15", utc, end=True) == datetime(
        2025, 6, 1, 7, 15, tzinfo=utc
    )
    assert parse_validity("2025-06-01 07:15:30Z", utc, end=False) == datetime(
        2025, 6, 1, 7, 15, 30, tzinfo=UTC
    )
    for bad in ("2025-6-1", "20250601", "tomorrow", "2025-06-01T25:00"):
        with pytest.raises(ValueError):  # noqa: PT011 - any ValueError
            parse_validity(bad, utc, end=False)


def test_lookups_are_not_blocked_by_an_import(store: CredentialStore, tmp_path: Path) -> None:
    ada = store.add_cardholder("Ada")
    store.add_credential(ada, CARD)
    with store.bulk_import() as bulk:
        from controller.access.store import CardEntry, ImportRow

        bulk.add([ImportRow(2, "Bob", (CardEntry("number:5", "number", "number:*"),))])
        assert store.lookup(CARD) is not None  # readers never wait for the import
        assert store.lookup("number:5") is None  # and do not see it before it commits
        assert bulk.conflicts() == (0, [])
        bulk.commit()
    assert store.lookup("number:5") is not None


def test_import_20k_rows(store: CredentialStore, tmp_path: Path) -> None:
    from bench.credential_import import card_key, pin
    from bench.credential_import import write_csv as bench_csv

    for name in ("staff", "lab", "night"):
        store.add_level(name, ["front"])
    path = tmp_path / "20k.csv"
    bench_csv(path, 20_000)
    report = import_csv(store, path)
    assert report.committed, report.rejected[:3]
    assert (report.rows, report.cardholders, report.credentials) == (20_000, 20_000, 20_000)
    assert store.counts() == {
        "cardholders": 20_000,
        "credentials": 20_000,
        "pins": 20_000,
        "levels": 3,
    }
    for i in (0, 1, 9_999, 19_999):
        found = store.lookup(card_key(i))
        assert found is not None
        assert found.cardholder.name == f"Person {i:07d}"
        assert store.check_pin(found.cardholder.id, pin(i)) is PinCheck.OK
    # importing it again is rejected row by row, as the store already holds every card and PIN
    report = import_csv(store, path, max_listed=2)
    assert not report.committed
    assert report.rejected_count == 20_000
    assert report.rejected[0].line == 2
    assert "already enrolled" in report.rejected[0].reason
    assert "PIN in use: same as another cardholder's PIN" in report.rejected[0].reason


# --------------------------------------------------------------------------- export


def test_export_csv(store: CredentialStore, tmp_path: Path) -> None:
    store.add_level("staff", ["front"])
    ada = store.add_cardholder(
        "Ada, Countess", pin="8642", privileges=["override"],
        valid_until=datetime(2030, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=1))),
    )  # fmt: skip
    store.grant_level(ada, "staff")
    store.add_credential(ada, CARD)
    c2 = store.add_credential(ada, CARD2)
    store.set_credential_state(c2, "lost")
    store.add_cardholder("Bob")
    out = tmp_path / "export.csv"
    progress: list[tuple[int, int]] = []
    report = export_csv(store, out, progress=lambda d, t: progress.append((d, t)))
    assert (report.cardholders, report.credentials) == (2, 2)
    assert progress[-1] == (2, 2)
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    with out.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(EXPORT_COLUMNS)
    assert len(rows) == 3
    first, second, bob = rows
    assert first["name"] == "Ada, Countess"
    assert first["valid_until"] == "2030-01-01T12:00:00+01:00"
    assert (first["privileges"], first["levels"], first["pin"]) == ("override", "staff", "yes")
    assert (first["card_masked"], first["card_state"]) == ("h10301:201:***13", "active")
    assert second["card_state"] == "lost"
    assert second["card_format"] == "uid"
    assert (bob["name"], bob["pin"], bob["credential_id"], bob["card_masked"]) == (
        "Bob",
        "no",
        "",
        "",
    )
    text = out.read_text()
    assert "48213" not in text
    assert "D4E5" not in text
    assert not list(tmp_path.glob(".export.csv.*"))  # no temp file left
    with pytest.raises(ImportFileError, match="is an export"):
        import_csv(store, out)


def test_export_is_one_snapshot(store: CredentialStore) -> None:
    a = store.add_cardholder("A")
    b = store.add_cardholder("B")
    rows = store.iter_export(batch=1)
    assert next(rows)[0].id == a
    store.add_cardholder("C")  # committed while the export is half-way
    store.update_cardholder(b, name="B2")
    assert [(h.id, h.name) for h, _ in rows] == [(b, "B")]
    assert store.counts()["cardholders"] == 3


# --------------------------------------------------------------------------- properties

_names = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=30
).filter(lambda s: s.strip() != "")
_offsets = st.integers(-12 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
_moments = st.builds(
    lambda dt, tz: dt.replace(tzinfo=tz),
    st.datetimes(datetime(2000, 1, 1), datetime(2099, 1, 1)),
    _offsets,
)
_keys = st.one_of(
    st.builds(lambda f, n: f"h10301:{f}:{n}", st.integers(0, 255), st.integers(0, 65535)),
    st.builds(lambda f, n: f"h10304:{f}:{n}", st.integers(0, 65535), st.integers(0, 524287)),
    st.binary(min_size=4, max_size=10).map(lambda b: f"uid:{b.hex().upper()}"),
    st.integers(0, 10**12).map(lambda n: f"number:{n}"),
)
_holder = st.fixed_dictionaries(
    {
        "name": _names,
        "state": st.sampled_from(list(CardholderState)),
        "privileges": st.frozensets(st.sampled_from(list(Privilege))),
        "valid_from": st.none() | _moments,
        "valid_until": st.none() | _moments,
        "keys": st.lists(_keys, max_size=3, unique=True),
        "card_state": st.sampled_from(list(CardholderState)),
    }
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_holder, min_size=1, max_size=6))
def test_cardholders_and_credentials_round_trip(holders: list[dict[str, object]]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        secret = bytes(range(32))
        with CredentialStore.open(Path(d) / "c.db", secret) as store:
            seen: set[str] = set()
            for h in holders:
                vf, vu = h["valid_from"], h["valid_until"]
                assert vf is None or isinstance(vf, datetime)
                assert vu is None or isinstance(vu, datetime)
                if vf is not None and vu is not None and vu <= vf:
                    vu = None
                cid = store.add_cardholder(
                    str(h["name"]),
                    state=h["state"],  # type: ignore[arg-type]
                    privileges=h["privileges"],  # type: ignore[arg-type]
                    valid_from=vf,
                    valid_until=vu,
                )
                keys = [k for k in h["keys"] if k not in seen]  # type: ignore[attr-defined]
                for k in keys:
                    seen.add(k)
                    store.add_credential(cid, k, state=h["card_state"])  # type: ignore[arg-type]
                holder = store.get_cardholder(cid)
                assert holder.name == h["name"]
                assert holder.state == h["state"]
                assert holder.privileges == h["privileges"]
                assert holder.valid_from == vf
                assert holder.valid_until == vu
                if vf is not None:
                    assert holder.valid_from is not None
                    assert holder.valid_from.utcoffset() == vf.utcoffset()
                for k in keys:
                    found = store.lookup(k)
                    assert found is not None
                    assert found.cardholder == holder
                    assert found.state == h["card_state"]
                    assert found.display == card_entry(k).masked
            assert store.counts()["credentials"] == len(seen)


# --------------------------------------------------------------------------- benchmark smoke


def test_bench_credential_import_smoke() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.credential_import", "--rows", "2000", "--lookups", "200",
         "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["bench"] == "credential_import"
    assert result["rows"] == 2000
    assert result["credentials"] == 2000
    assert result["stored_credentials"] == 2000
    for key in (
        "import_s",
        "rows_per_s",
        "import_cpu_s",
        "rss_mb",
        "rss_hwm_mb",
        "lookup_p50_us",
        "lookup_p99_us",
        "pin_lookup_p99_us",
        "lookup_unknown_p99_us",
        "db_mb",
        "import_rss_hwm_mb",
    ):
        assert isinstance(result[key], int | float), key
        assert result[key] >= 0, key
    assert isinstance(result["target_met"], bool)
    assert isinstance(result["import_phases_s"], dict)
