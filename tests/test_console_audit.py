"""The hash-chained audit log: intact chains verify, every kind of tampering is named at its first entry."""

from __future__ import annotations

import itertools
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.test_console_world import EORI_X, OFFICE_A, alert_for, declaration_for, open_console, seed_world
from vigie.schemas.audit import GENESIS_HASH, AuditEntry
from vigie.streams.console_app import ConsoleServices, ConsoleSettings
from vigie.streams.console_audit import AuditAnchorMismatch, AuditLog, audit_ddl, verify_entries
from vigie.streams.console_auth import AccountStore
from vigie.streams.console_cli import console_app_cli

KEY = b"k" * 32


def fill(log: AuditLog, n: int) -> list[AuditEntry]:
    """``n`` entries alternating alerts raised and outcomes recorded."""
    entries = []
    for i in range(n):
        if i % 2 == 0:
            entries.append(
                log.append(
                    "alert_raised",
                    "engine",
                    "engine",
                    "alert",
                    f"alert-{i}",
                    "FR002300",
                    {"fused_risk": 0.9, "eur_at_stake": 100.0 * i},
                )
            )
        else:
            entries.append(
                log.append(
                    "outcome_recorded",
                    "ana",
                    "officer",
                    "outcome",
                    f"console-{i}",
                    "FR002300",
                    {"alert_id": f"alert-{i - 1}", "positive": True},
                )
            )
    return entries


def rows(entries: list[AuditEntry]) -> list[dict[str, Any]]:
    return [e.model_dump() for e in entries]


@pytest.fixture
def console(tmp_path: Path) -> Iterator[ConsoleServices]:
    with open_console(tmp_path) as (services, _):
        yield services


# --------------------------------------------------------------------------------------------
# in ClickHouse (chdb)
# --------------------------------------------------------------------------------------------


def test_an_intact_log_verifies_and_an_edited_row_is_named(console: ConsoleServices) -> None:
    log = console.audit
    entries = fill(log, 6)
    assert [e.seq for e in entries] == list(range(6))
    assert entries[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.entry_hash for a, b in itertools.pairwise(entries))
    report = log.verify()
    assert report.ok and report.entries == 6 and report.head_seq == 5 and report.seals_checked

    # Someone with write access to ClickHouse lowers the amount of entry 2.
    console.store.query(
        'ALTER TABLE vigie.audit_log UPDATE detail = \'{"eur_at_stake":1.0,"fused_risk":0.9}\' WHERE seq = 2 '
        "SETTINGS mutations_sync = 1"
    )
    report = log.verify()
    assert not report.ok and report.first_broken is not None
    assert report.first_broken.seq == 2 and "does not match its hash" in report.first_broken.reason
    assert "entry seq 2 (alert_raised by engine" in str(report)


def test_recomputing_the_hash_without_the_key_breaks_the_seal(console: ConsoleServices) -> None:
    log = console.audit
    entries = fill(log, 4)
    forged = entries[1].model_copy(update={"actor": "bob"})
    forged_hash = forged.computed_hash()
    console.store.query(
        f"ALTER TABLE vigie.audit_log UPDATE actor = 'bob', entry_hash = '{forged_hash}' WHERE seq = 1 "
        "SETTINGS mutations_sync = 1"
    )
    broken = log.verify().first_broken
    assert broken is not None and broken.seq == 1 and "seal is wrong" in broken.reason


def test_deleted_entries_are_found_in_the_middle_and_at_the_end(console: ConsoleServices) -> None:
    log = console.audit
    fill(log, 5)
    console.store.query("ALTER TABLE vigie.audit_log DELETE WHERE seq = 4 SETTINGS mutations_sync = 1")
    tail = log.verify().first_broken
    # The chain 0..3 is intact on its own: only the writer's anchor shows the tail is gone.
    assert tail is not None and tail.seq == 4 and "anchored seq 4" in tail.reason
    console.store.query("ALTER TABLE vigie.audit_log DELETE WHERE seq = 2 SETTINGS mutations_sync = 1")
    middle = log.verify().first_broken
    assert middle is not None and middle.seq == 2 and "missing" in middle.reason


def test_appends_continue_the_chain_after_a_restart(tmp_path: Path) -> None:
    with open_console(tmp_path) as (services, _):
        first = fill(services.audit, 3)
    from vigie.sinks.chdb_sink import ChdbSink

    with ChdbSink(tmp_path / "clickhouse") as sink:
        log = AuditLog(sink, _key(tmp_path), tmp_path / "state" / "audit-head.json")
        entry = log.append("login", "ana", "officer", "account", "ana")
        assert entry.seq == 3 and entry.prev_hash == first[-1].entry_hash
        assert log.verify().ok


def _key(tmp_path: Path) -> bytes:
    return bytes.fromhex(json.loads((tmp_path / "state" / "secrets.json").read_text())["audit_key"])


def test_vigie_audit_verify_exits_1_naming_the_first_broken_entry(tmp_path: Path) -> None:
    with open_console(tmp_path) as (services, _):
        fill(services.audit, 4)
    runner = CliRunner()
    args = ["audit", "verify", "--data-dir", str(tmp_path), "--state-dir", str(tmp_path / "state")]
    intact = runner.invoke(console_app_cli, args)
    assert intact.exit_code == 0, intact.output
    assert "intact: 4 entries, hashes and seals verified" in intact.output

    from vigie.sinks.chdb_sink import ChdbSink

    with ChdbSink(tmp_path / "clickhouse") as sink:
        sink.query("ALTER TABLE vigie.audit_log UPDATE actor = 'mallory' WHERE seq = 1 SETTINGS mutations_sync = 1")
    broken = runner.invoke(console_app_cli, args)
    assert broken.exit_code == 1
    assert "first broken entry seq 1 (outcome_recorded by mallory" in broken.output
    assert "does not match its hash" in broken.output


# --------------------------------------------------------------------------------------------
# the checks themselves (no store)
# --------------------------------------------------------------------------------------------


class _MemoryStore:
    """Just enough of a Sink for AuditLog's constructor (inserts are captured by the test)."""

    def query(self, sql: str) -> list[dict[str, Any]]:
        return []


def _chain(n: int) -> list[AuditEntry]:
    store = _MemoryStore()
    log = AuditLog(store, KEY)  # type: ignore[arg-type]
    made: list[AuditEntry] = []
    log._insert = made.extend  # type: ignore[method-assign]  # keep entries in memory
    fill(log, n)
    return made


def test_verify_names_reordered_duplicated_and_unparsable_entries() -> None:
    chain = _chain(5)
    assert verify_entries(rows(chain), KEY).ok
    assert verify_entries(rows(chain), None).seals_checked is False

    swapped = rows(chain)
    swapped[1], swapped[2] = swapped[2], swapped[1]
    broken = verify_entries(swapped, KEY).first_broken
    assert broken is not None and broken.seq == 1  # seq 2 found where seq 1 belongs: 1 is missing

    twin = rows(chain)
    twin.insert(3, {**twin[2], "actor": "someone-else"})
    broken = verify_entries(twin, KEY).first_broken
    assert broken is not None and broken.seq == 2 and "two different versions" in broken.reason
    assert verify_entries([*rows(chain[:3]), rows(chain)[2], *rows(chain[3:])], KEY).ok  # identical copy: fine

    garbled = rows(chain)
    garbled[3]["entry_hash"] = "not-a-hash"
    broken = verify_entries(garbled, KEY).first_broken
    assert broken is not None and broken.seq == 3 and "not a valid entry" in broken.reason

    relinked = rows(chain)
    relinked[4]["prev_hash"] = "f" * 64
    broken = verify_entries(relinked, None).first_broken
    assert broken is not None and broken.seq == 4 and "does not match its hash" in broken.reason

    anchor = {"seq": 4, "entry_hash": chain[4].entry_hash}
    assert verify_entries(rows(chain), KEY, anchor).ok
    broken = verify_entries(rows(chain[:3]), KEY, anchor).first_broken
    assert broken is not None and broken.seq == 3 and "anchored seq 4" in broken.reason


def test_the_table_is_rendered_from_the_model_for_both_server_tiers() -> None:
    from vigie.sinks.ddl import LEGACY, MODERN

    modern, legacy = audit_ddl(MODERN), audit_ddl(LEGACY)
    for name in AuditEntry.model_fields:
        assert f"    {name} " in modern and f"    {name} " in legacy
    assert "DateTime64(3, 'UTC')" in modern and "entry_time DateTime('UTC')" in legacy
    assert "ORDER BY (seq)" in modern and "TTL" not in modern


def test_every_alert_raised_is_audited_once_even_past_a_page(console: ConsoleServices) -> None:
    console.watcher.page = 2  # a backlog bigger than a page, stored in the same second
    world = seed_world(console.store)
    extra = [alert_for(declaration_for(OFFICE_A, EORI_X, 100 + i)) for i in range(3)]
    console.store.write(extra)
    console.store.flush()
    assert console.watcher.poll_once() == 5
    assert console.watcher.poll_once() == 0  # re-read overlap recognised by id
    audited = console.store.query("SELECT subject_id FROM vigie.audit_log WHERE action = 'alert_raised' ORDER BY seq")
    expected = [world.alert_a, world.alert_b, *(a.alert_id for a in extra)]
    assert sorted(r["subject_id"] for r in audited) == sorted(expected)
    assert console.audit.verify().ok


def test_deleting_the_newest_entries_is_not_forgotten_after_a_restart(tmp_path: Path) -> None:
    with open_console(tmp_path) as (services, _):
        fill(services.audit, 5)
    anchor_path = tmp_path / "state" / "audit-head.json"
    anchor = anchor_path.read_text()
    from vigie.sinks.chdb_sink import ChdbSink

    with ChdbSink(tmp_path / "clickhouse") as sink:
        sink.query("ALTER TABLE vigie.audit_log DELETE WHERE seq >= 3 SETTINGS mutations_sync = 1")
        log = AuditLog(sink, _key(tmp_path), anchor_path)
        assert log.refusal is not None and "records seq 4" in log.refusal
        with pytest.raises(AuditAnchorMismatch, match="entries were deleted"):
            log.append("login", "ana", "officer", "account", "ana")
        assert anchor_path.read_text() == anchor  # the anchor did not move back
        assert sink.query("SELECT count() AS n FROM vigie.audit_log") == [{"n": 3}]
        report = log.verify()
        assert not report.ok and "BROKEN" in str(report) and "anchored seq 4" in str(report)
        # The console refuses to start on such a log rather than serve without an audit trail.
        config = ConsoleSettings(data_dir=tmp_path, state_dir=tmp_path / "state")
        with pytest.raises(AuditAnchorMismatch):
            ConsoleServices.create(config, sink, accounts=AccountStore(tmp_path / "state" / "accounts.json"))
    args = ["audit", "verify", "--data-dir", str(tmp_path), "--state-dir", str(tmp_path / "state")]
    result = CliRunner().invoke(console_app_cli, args)
    assert result.exit_code == 1 and "anchored seq 4" in result.output


def test_the_anchor_is_written_privately_and_atomically(console: ConsoleServices) -> None:
    fill(console.audit, 2)
    anchor_path = console.settings.resolved_state_dir / "audit-head.json"
    assert stat.S_IMODE(os.stat(anchor_path).st_mode) == 0o600
    assert json.loads(anchor_path.read_text())["seq"] == 1
    assert not [p for p in anchor_path.parent.iterdir() if p.name.endswith(".tmp")]


def test_vigie_audit_verify_fails_without_anchor_or_key_unless_told(tmp_path: Path) -> None:
    with open_console(tmp_path) as (services, _):
        fill(services.audit, 3)
    runner = CliRunner()
    state = tmp_path / "state"
    args = ["audit", "verify", "--data-dir", str(tmp_path), "--state-dir", str(state)]
    (state / "audit-head.json").rename(state / "anchor.bak")
    missing_anchor = runner.invoke(console_app_cli, args)
    assert missing_anchor.exit_code == 1 and "--allow-missing-anchor" in missing_anchor.output
    assert runner.invoke(console_app_cli, [*args, "--allow-missing-anchor"]).exit_code == 0
    (state / "anchor.bak").rename(state / "audit-head.json")

    (state / "secrets.json").rename(state / "secrets.bak")
    missing_key = runner.invoke(console_app_cli, args)
    assert missing_key.exit_code == 1 and "--allow-missing-key" in missing_key.output
    assert not (state / "secrets.json").exists()  # verify never makes up a key
    accepted = runner.invoke(console_app_cli, [*args, "--allow-missing-key"])
    assert accepted.exit_code == 0 and "hashes only (no audit key)" in accepted.output
