"""The store reads and writes a full sync makes a page at a time give what one contact at a time gives."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from crmsync.connectors.apsis.records import CHANNEL_EMAIL, CHANNEL_SMS, ApsisProfile, ConsentKey
from crmsync.daemon.integrations.efficy_apsis import store
from crmsync.daemon.integrations.efficy_apsis.rules import (
    ConsentRule,
    OptOutRecord,
    Plan,
    fingerprint,
    profile_from_fingerprint,
)
from crmsync.state import Database
from crmsync.state import queries as q

NAME = "ea"
RULES = (ConsentRule("1", ConsentKey("news", CHANNEL_EMAIL)), ConsentRule("2", ConsentKey("offers", CHANNEL_SMS)))
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _seed(c: sqlite3.Connection, ids: list[str]) -> None:
    for i, cid in enumerate(ids):
        if i % 2:
            profile = ApsisProfile(cid, {"crmid": cid}, {RULES[0].slot: "opt-in"})
            q.put_fingerprint(c, NAME, cid, fingerprint(profile), f"2026-01-0{1 + i % 5}T00:00:00+00:00", "now")
        if i % 3:
            q.put_link(c, NAME, cid, cid, "now")
        if i % 5 == 0:
            rec = OptOutRecord(cid, "2", RULES[1].slot, T0 + timedelta(seconds=i))
            q.kv_set(c, NAME, store.optout_key(cid, "2", RULES[1].slot), rec.to_json())
        if i % 7 == 0:
            q.kv_set(c, NAME, store.merge_key(cid), "409 conflict")
        if i % 4 == 0:
            q.kv_set(c, NAME, store.own_optout_key(cid, RULES[0].slot), (T0 + timedelta(hours=i)).isoformat())
        if i % 6 == 0:
            store.record_sightings(NAME, cid, [("1", i % 12 == 0), ("2", True)], T0 + timedelta(minutes=i))(c)


def _one_at_a_time(c: sqlite3.Connection, cid: str) -> store.ContactState:
    """What the store holds on one contact, query by query (the reference for the page-at-once read)."""
    fp = q.get_fingerprint(c, NAME, cid)
    state = store.ContactState(linked=q.link_for_crm(c, NAME, cid) is not None)
    if fp is not None:
        state.current = profile_from_fingerprint(cid, fp[0])
        state.written_version = fp[1]
    for rule in RULES:
        raw = q.kv_get(c, NAME, store.optout_key(cid, rule.profile_id, rule.slot))
        if raw:
            state.optouts[(rule.profile_id, rule.slot)] = OptOutRecord.from_json(raw)
    state.observations = store.get_observations(c, NAME, cid)
    state.merge_refused = q.kv_get(c, NAME, store.merge_key(cid))
    for rule in RULES:
        own = q.kv_get(c, NAME, store.own_optout_key(cid, rule.slot))
        if own:
            state.own_optouts[rule.slot] = datetime.fromisoformat(own)
    return state


def test_load_states_of_a_page_equals_one_contact_at_a_time(tmp_path: Path) -> None:
    db = Database.open_sync(tmp_path / "s.db")
    ids = [str(10_000 + i) for i in range(260)]  # more than one chunk of host parameters
    db.tx_sync(_seed, ids)
    together = db.tx_sync(store.load_states, NAME, ids + ids[:3], RULES)
    assert list(together) == ids
    for cid in ids:
        assert together[cid] == db.tx_sync(_one_at_a_time, cid), cid
    assert sum(s.merge_refused is not None for s in together.values())
    assert sum(s.linked for s in together.values()) and sum(bool(s.optouts) for s in together.values())
    assert sum(bool(s.observations) for s in together.values()) and sum(bool(s.own_optouts) for s in
                                                                        together.values())
    db.close()


def test_page_sightings_store_what_each_plan_alone_stores(tmp_path: Path) -> None:
    ids = [str(20_000 + i) for i in range(120)]
    at = T0 + timedelta(days=1)
    plans = [Plan("skip", cid, read_at=at if i % 9 else None,
                  sightings=(("1", i % 2 == 0), ("2", i % 3 == 0)) if i % 11 else ()) for i, cid in enumerate(ids)]
    results = _sightings_alone_and_by_page(tmp_path, ids, plans)
    assert results[0] == results[1]
    assert len(results[0]) > 100


def test_load_states_when_some_kinds_of_state_are_absent(tmp_path: Path) -> None:
    """The page read skips a kind of kv state (merge refusals, opt-out records, own opt-outs) only when no
    contact has any: with each kind alone, or none, it still equals one contact at a time."""
    ids = [str(30_000 + i) for i in range(130)]
    seeds = {
        "nothing": lambda c, cid, i: None,
        "optouts": lambda c, cid, i: q.kv_set(c, NAME, store.optout_key(cid, "2", RULES[1].slot), OptOutRecord(
            cid, "2", RULES[1].slot, T0).to_json()) if i % 5 == 0 else None,
        "merge": lambda c, cid, i: q.kv_set(c, NAME, store.merge_key(cid), "409") if i % 7 == 0 else None,
        "own": lambda c, cid, i: q.kv_set(c, NAME, store.own_optout_key(cid, RULES[0].slot),
                                          T0.isoformat()) if i % 4 == 0 else None,
        # keys that sort right beside the kinds' prefixes, of other contacts and other integrations
        "neighbours": lambda c, cid, i: (q.kv_set(c, NAME, "optout", "x"), q.kv_set(c, NAME, "optout;", "x"),
                                         q.kv_set(c, "other", store.merge_key(cid), "409")),
    }
    for name, seed in seeds.items():
        db = Database.open_sync(tmp_path / f"{name}.db")
        db.tx_sync(lambda c, seed=seed: [seed(c, cid, i) for i, cid in enumerate(ids)])
        together = db.tx_sync(store.load_states, NAME, ids, RULES)
        for cid in ids:
            assert together[cid] == db.tx_sync(_one_at_a_time, cid), (name, cid)
        db.close()


def test_page_sightings_with_several_read_times_and_zones(tmp_path: Path) -> None:
    """Plans of one page batch share a read time, but a batch may mix reads (and the same instant written in
    another zone is stored as that zone's text): the page write still stores what each plan alone stores."""
    ids = [str(40_000 + i) for i in range(90)]
    at = T0 + timedelta(days=2)
    same_instant_elsewhere = at.astimezone(timezone(timedelta(hours=2)))
    later = at + timedelta(minutes=5)
    times = (at, same_instant_elsewhere, later)
    plans = [Plan("skip", cid, read_at=times[i % 3], sightings=(("1", i % 2 == 0), ("2", i % 5 != 0)))
             for i, cid in enumerate(ids + ids[:20])]  # the first 20 read twice
    results = _sightings_alone_and_by_page(tmp_path, ids, plans)
    assert results[0] == results[1]
    assert any("+02:00" in str(tuple(row)) for row in results[0])


def _sightings_alone_and_by_page(tmp_path: Path, ids: list[str], plans: list[Plan]) -> list[list[Any]]:
    """The link observations ``plans`` leave, written plan by plan and then as one page (two stores)."""
    results = []
    for name, write in (("alone", lambda c: [store.plan_sightings(NAME, p)(c) for p in plans]),
                        ("page", store.page_sightings(NAME, plans))):
        db = Database.open_sync(tmp_path / f"{name}.db")
        db.tx_sync(_seed, ids)
        db.tx_sync(write)
        results.append(db.tx_sync(lambda c: c.execute(
            "SELECT contact_id, profile_id, present_since, absent_at FROM link_observations "
            "ORDER BY contact_id, profile_id").fetchall()))
        db.close()
    return results


def test_written_many_stores_what_written_stores_profile_by_profile(tmp_path: Path) -> None:
    """A batch's links and fingerprints (one DELETE per chunk of keys) equal ``written`` one profile at a time:
    a profile linked to another contact loses that link, whatever the chunk it falls in."""
    ids = [str(50_000 + i) for i in range(1_200)]  # more keys than one IN (...) chunk
    batch = ids[::2] + ids[5:9]  # some keys twice
    now = "2026-01-02T00:00:00+00:00"

    def seed(c: sqlite3.Connection) -> None:
        _seed(c, ids)
        for i, cid in enumerate(ids):
            if i % 4 != 1:  # another contact holds this profile key (a merged or renumbered contact)
                q.put_link(c, NAME, f"old-{cid}", cid, "then")
            if i % 11 == 0:
                q.put_link(c, "other", f"old-{cid}", cid, "then")  # another integration: left alone

    results = []
    for name, write in (
            ("alone", lambda c: [store.written(NAME, ApsisProfile(k, {"crmid": k}), "v1", now)(c) for k in batch]),
            ("many", store.written_many(NAME, [(k, fingerprint(ApsisProfile(k, {"crmid": k})), "v1")
                                               for k in batch], now))):
        db = Database.open_sync(tmp_path / f"{name}.db")
        db.tx_sync(seed)
        db.tx_sync(write)
        results.append(db.tx_sync(lambda c: (
            c.execute("SELECT * FROM links ORDER BY integration, crm_id").fetchall(),
            c.execute("SELECT * FROM fingerprints ORDER BY integration, record_key").fetchall())))
        db.close()
    assert results[0] == results[1]
    assert any(row[1].startswith("old-") for row in results[1][0])  # kept: keys not in the batch, other integration
