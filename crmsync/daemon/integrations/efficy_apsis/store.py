"""What ``efficy_apsis`` keeps in the store, as transaction functions (plain ``sqlite3``, no trio).

* links: ``crm_id`` = K_CONTACT, ``messaging_id`` = the APSIS profile key (the same K_CONTACT, in the
  CRM-id keyspace);
* fingerprints: per profile, the canonical JSON of the last payload sent, with ``source_version`` = the
  Efficy modification time it came from (the stale-write guard);
* kv ``optout:{contact}:{profile}:{topic}|{channel}``: durable records of opt-outs made in APSIS;
* table ``link_observations``: per (contact, CRM Profile), when crmsync's reads last saw the link absent
  and first saw it present again (the evidence that a link is newer than an opt-out);
* kv ``own_optout:{contact}:{topic}|{channel}``: when crmsync's own write put an opt-out in force there;
* kv ``merge_refused:{contact}``: APSIS's 409 on merging the contact's profile with the email-keyspace
  profile of its address (reported, never retried);
* table ``efficy_tagged_members``: the contacts crmsync tagged from a query or CRM Profile (to untag those
  who leave it); table ``efficy_tag_candidates``: a tags run's candidates, walked in chunks.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import structlog

from crmsync.connectors.apsis.records import ApsisProfile, Consent, ConsentKey
from crmsync.daemon.integrations.efficy_apsis import consent_trail
from crmsync.daemon.integrations.efficy_apsis.rules import (
    ConsentRule,
    Known,
    LinkObservation,
    OptOutRecord,
    Plan,
    fingerprint,
    observe_link,
    profile_from_fingerprint,
)
from crmsync.state import consent_history
from crmsync.state import queries as q

log = structlog.get_logger("crmsync.daemon.integrations.efficy_apsis.store")

TxFn = Callable[[sqlite3.Connection], Any]


#: What crmsync knows of one contact before syncing it (plain data, defined with the rules).
ContactState = Known


def merge_key(contact_id: str) -> str:
    return f"merge_refused:{contact_id}"


def own_optout_key(contact_id: str, slot: ConsentKey) -> str:
    return f"own_optout:{contact_id}:{slot.topic}|{slot.channel}"


def consents_written(integration: str, contact_id: str, changed: Mapping[ConsentKey, tuple[str, datetime]]
                     ) -> TxFn:
    """Remember the opt-outs crmsync's own writes put in force (APSIS answered created/changed), and forget
    them when it writes an opt-in: an APSIS opt-out not newer than crmsync's own is no person's opt-out."""

    def tx(c: sqlite3.Connection) -> None:
        for slot, (kind, at) in changed.items():
            key = own_optout_key(contact_id, slot)
            if kind == "opt-out":
                q.kv_set(c, integration, key, at.isoformat())
            else:
                q.kv_delete(c, integration, key)

    return tx


def optout_key(contact_id: str, profile_id: str, slot: ConsentKey) -> str:
    return f"optout:{contact_id}:{profile_id}:{slot.topic}|{slot.channel}"


def load_states(c: sqlite3.Connection, integration: str, contact_ids: Iterable[str],
                rules: Sequence[ConsentRule]) -> dict[str, ContactState]:
    """States of several contacts, read in one transaction (a few queries per chunk of contacts, not
    several per contact: a full sync loads a page at a time)."""
    ids = list(dict.fromkeys(contact_ids))
    out: dict[str, ContactState] = {}
    # which of the per-contact kv kinds exist at all (one index probe each): a first sync, or one without
    # opt-outs, then builds and looks up none of those keys
    kinds = [_any_key_with_prefix(c, integration, prefix) for prefix in ("merge_refused:", "optout:", "own_optout:")]
    per_contact = 1 + 2 * len(rules)  # kv keys per contact
    step = max(1, _IN_CHUNK // per_contact)
    for start in range(0, len(ids), step):
        chunk = ids[start:start + step]
        fps = dict(_rows_in(c, "SELECT record_key, fingerprint, source_version FROM fingerprints "
                               "WHERE integration = ? AND record_key IN ({})", integration, chunk,
                            lambda r: (r[0], (r[1], r[2]))))
        linked = {r[0] for r in _rows_in(c, "SELECT crm_id, messaging_id FROM links "
                                            "WHERE integration = ? AND crm_id IN ({})", integration, chunk,
                                         lambda r: r) if r[1] is not None}
        keys: list[str] = []
        for cid in chunk:
            if kinds[0]:
                keys.append(merge_key(cid))
            if kinds[1]:
                keys += [optout_key(cid, rule.profile_id, rule.slot) for rule in rules]
            if kinds[2]:
                keys += [own_optout_key(cid, rule.slot) for rule in rules]
        kv = dict(_rows_in(c, "SELECT key, value FROM kv WHERE integration = ? AND key IN ({})", integration,
                           keys, lambda r: (r[0], r[1])))
        observations = observations_of(c, integration, chunk)
        for cid in chunk:
            state = ContactState(linked=cid in linked)
            fp = fps.get(cid)
            if fp is not None:
                state.current = profile_from_fingerprint(cid, fp[0])
                state.written_version = fp[1]
            for rule in rules:
                raw = kv.get(optout_key(cid, rule.profile_id, rule.slot))
                if raw:
                    state.optouts[(rule.profile_id, rule.slot)] = OptOutRecord.from_json(raw)
            state.observations = observations.get(cid, {})
            state.merge_refused = kv.get(merge_key(cid))
            for rule in rules:
                own = kv.get(own_optout_key(cid, rule.slot))
                if own:
                    state.own_optouts[rule.slot] = datetime.fromisoformat(own)
            out[cid] = state
    return out


_IN_CHUNK = 500  # host parameters per IN (...) list, well under SQLite's limit


def _any_key_with_prefix(c: sqlite3.Connection, integration: str, prefix: str) -> bool:
    """Whether the kv table holds any key starting with ``prefix`` (a range seek on its primary key)."""
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    return c.execute("SELECT 1 FROM kv WHERE integration = ? AND key >= ? AND key < ? LIMIT 1",
                     (integration, prefix, end)).fetchone() is not None


def _rows_in(c: sqlite3.Connection, sql: str, integration: str, values: Sequence[str],
             shape: Callable[[Any], Any]) -> Iterator[Any]:
    """Rows of ``sql`` (one ``IN ({})`` placeholder) for ``values``, in chunks of host parameters."""
    for start in range(0, len(values), _IN_CHUNK):
        chunk = values[start:start + _IN_CHUNK]
        for row in c.execute(sql.format(",".join("?" * len(chunk))), (integration, *chunk)):
            yield shape(row)


def observations_of(c: sqlite3.Connection, integration: str, contact_ids: Sequence[str]
                    ) -> dict[str, dict[str, LinkObservation]]:
    """:func:`get_observations` of several contacts (contacts without any are left out)."""
    out: dict[str, dict[str, LinkObservation]] = {}
    for cid, pid, since, absent in _rows_in(
            c, "SELECT contact_id, profile_id, present_since, absent_at FROM link_observations "
               "WHERE integration = ? AND contact_id IN ({})", integration, contact_ids, lambda r: r):
        out.setdefault(str(cid), {})[str(pid)] = LinkObservation(_time(since), _time(absent))
    return out


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def get_observations(c: sqlite3.Connection, integration: str, contact_id: str) -> dict[str, LinkObservation]:
    rows = c.execute("SELECT profile_id, present_since, absent_at FROM link_observations "
                     "WHERE integration = ? AND contact_id = ?", (integration, contact_id)).fetchall()
    return {str(r[0]): LinkObservation(_time(r[1]), _time(r[2])) for r in rows}


def record_sightings(integration: str, contact_id: str, sightings: Iterable[tuple[str, bool]],
                     at: datetime | None) -> TxFn:
    """Merge link sightings made by one read at ``at`` into the store, inside the transaction (flows that
    run side by side, e.g. the backflow and real-time, never lose each other's sightings)."""
    seen = list(sightings)

    def tx(c: sqlite3.Connection) -> None:
        if at is None or not seen:
            return
        have = get_observations(c, integration, contact_id)
        for pid, present in seen:
            before = have.get(pid)
            after = observe_link(before, present, at)
            if after == before:
                continue
            c.execute(
                "INSERT INTO link_observations (integration, contact_id, profile_id, present_since, absent_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (integration, contact_id, profile_id) DO UPDATE SET "
                "present_since = excluded.present_since, absent_at = excluded.absent_at",
                (integration, contact_id, pid, _iso(after.present_since), _iso(after.absent_at)))

    return tx


def page_sightings(integration: str, plans: Sequence[Plan]) -> TxFn:
    """:func:`plan_sightings` of every plan of a page in one transaction function (their observations read
    with one query per chunk of contacts); the same rows as each plan's alone, in the same order."""
    seen = [(p.contact_id, list(p.sightings), p.read_at) for p in plans if p.read_at is not None and p.sightings]

    def tx(c: sqlite3.Connection) -> None:
        if not seen:
            return
        have = observations_of(c, integration, list(dict.fromkeys(cid for cid, _, _ in seen)))
        rows: list[tuple[str, str, str, str | None, str | None]] = []
        # a page's plans share one read time (the same object): a first sighting's observation and that
        # time's text are made once per read time (by identity: equal times in other zones print otherwise)
        last_at: datetime | None = None
        at_text: str | None = None
        first: dict[bool, LinkObservation] = {}
        for cid, sightings, at in seen:
            assert at is not None
            if at is not last_at:
                last_at, at_text, first = at, _iso(at), {}
            mine = have.setdefault(cid, {})
            for pid, present in sightings:
                before = mine.get(pid)
                if before is None:
                    after = first.get(present)
                    if after is None:
                        after = first[present] = observe_link(None, present, at)
                else:
                    after = observe_link(before, present, at)
                    if after == before:
                        continue
                mine[pid] = after
                since, absent = after.present_since, after.absent_at
                rows.append((integration, cid, pid, at_text if since is at else _iso(since),
                             at_text if absent is at else _iso(absent)))
        c.executemany(
            "INSERT INTO link_observations (integration, contact_id, profile_id, present_since, absent_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (integration, contact_id, profile_id) DO UPDATE SET "
            "present_since = excluded.present_since, absent_at = excluded.absent_at", rows)

    return tx


def plan_sightings(integration: str, plan: Plan) -> TxFn:
    """Record what the read behind ``plan`` saw of the contact's CRM Profile links."""
    return record_sightings(integration, plan.contact_id, plan.sightings, plan.read_at)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def written(integration: str, profile: ApsisProfile, version: str | None, now: str, *,
            standing: Sequence[OptOutRecord] = ()) -> TxFn:
    """Link the profile and remember the payload sent (and the Efficy version it came from). Consent changes
    against the previous payload go to the consent history; ``standing``: APSIS opt-outs behind some of them."""

    def tx(c: sqlite3.Connection) -> None:
        before = q.get_fingerprint(c, integration, profile.key)
        previous = profile_from_fingerprint(profile.key, before[0]) if before is not None else None
        consent_history.add(c, integration, consent_trail.apsis_changes(previous, profile, version, now, standing))
        q.put_link(c, integration, profile.key, profile.key, now)
        q.put_fingerprint(c, integration, profile.key, fingerprint(profile), version, now)

    return tx


def put_optout(integration: str, record: OptOutRecord) -> TxFn:
    def tx(c: sqlite3.Connection) -> None:
        q.kv_set(c, integration, optout_key(record.contact_id, record.profile_id, record.slot), record.to_json())

    return tx


def drop_optout(integration: str, record: OptOutRecord) -> TxFn:
    def tx(c: sqlite3.Connection) -> None:
        q.kv_delete(c, integration, optout_key(record.contact_id, record.profile_id, record.slot))

    return tx


def get_members(c: sqlite3.Connection, integration: str, tag: str) -> set[str]:
    """The contacts crmsync tagged with ``tag`` (every one: for inspection and tests; the flow walks
    :func:`tag_candidates_page` instead)."""
    return {r[0] for r in c.execute("SELECT contact_id FROM efficy_tagged_members WHERE integration = ? AND tag = ?",
                                    (integration, tag))}


def count_tagged(c: sqlite3.Connection, integration: str, tag: str) -> int:
    return int(c.execute("SELECT count(*) FROM efficy_tagged_members WHERE integration = ? AND tag = ?",
                         (integration, tag)).fetchone()[0])


def record_tagged(integration: str, tag: str, tagged: Sequence[str], untagged: Sequence[str]) -> TxFn:
    """Contacts whose ``tag`` APSIS now holds (acknowledged or already there) and those it no longer holds
    or that were never synced: written with the report rows of the chunk that decided them."""

    def tx(c: sqlite3.Connection) -> None:
        c.executemany("INSERT OR IGNORE INTO efficy_tagged_members (integration, tag, contact_id) VALUES (?, ?, ?)",
                      [(integration, tag, cid) for cid in tagged])
        c.executemany("DELETE FROM efficy_tagged_members WHERE integration = ? AND tag = ? AND contact_id = ?",
                      [(integration, tag, cid) for cid in untagged])

    return tx


def stage_tag_candidates(run_id: int, integration: str, tag: str, members: Iterable[str]) -> TxFn:
    """A run's candidates for ``tag``: the ``members`` just read (consumed row by row, repeats allowed), then
    the contacts tagged before that are not members any more. Rows left by runs that are not running (a
    crash) go first. The transaction answers the number of distinct members."""

    def tx(c: sqlite3.Connection) -> int:
        c.execute("DELETE FROM efficy_tag_candidates WHERE integration = ? AND (run_id = ? AND tag = ? OR "
                  "run_id NOT IN (SELECT id FROM runs WHERE status = 'running'))", (integration, run_id, tag))
        # the length is Python's (code points), the sort key the flow always used: (len(id), id)
        inserted = c.executemany(
            "INSERT OR IGNORE INTO efficy_tag_candidates (run_id, integration, tag, id_length, contact_id, member) "
            "VALUES (?, ?, ?, ?, ?, 1)", ((run_id, integration, tag, len(cid), cid) for cid in members))
        count = inserted.rowcount
        c.execute("INSERT OR IGNORE INTO efficy_tag_candidates "
                  "(run_id, integration, tag, id_length, contact_id, member) "
                  "SELECT ?, integration, tag, length(contact_id), contact_id, 0 FROM efficy_tagged_members "
                  "WHERE integration = ? AND tag = ?", (run_id, integration, tag))
        return count

    return tx


#: where a walk of the candidates starts: before every (id length, id)
CANDIDATES_START: tuple[int, str] = (-1, "")


def tag_candidates_page(c: sqlite3.Connection, run_id: int, integration: str, tag: str, after: tuple[int, str],
                        limit: int) -> list[tuple[int, str, bool]]:
    """The next ``limit`` candidates after ``after`` in (id length, id) order: (id length, contact id, is a
    member); the last one's (id length, id) is where the next page starts."""
    rows = c.execute("SELECT id_length, contact_id, member FROM efficy_tag_candidates "
                     "WHERE run_id = ? AND integration = ? AND tag = ? AND (id_length, contact_id) > (?, ?) "
                     "ORDER BY id_length, contact_id LIMIT ?", (run_id, integration, tag, *after, limit))
    return [(int(n), str(cid), bool(member)) for n, cid, member in rows]


def drop_tag_candidates(run_id: int, integration: str, tag: str) -> TxFn:
    def tx(c: sqlite3.Connection) -> None:
        c.execute("DELETE FROM efficy_tag_candidates WHERE run_id = ? AND integration = ? AND tag = ?",
                  (run_id, integration, tag))

    return tx


def kv_get(c: sqlite3.Connection, integration: str, key: str) -> str | None:
    return q.kv_get(c, integration, key)


def kv_set(integration: str, key: str, value: str) -> TxFn:
    def tx(c: sqlite3.Connection) -> None:
        q.kv_set(c, integration, key, value)

    return tx


# -- APSIS opt-outs read from the consent report (bulk full sync) -------------------------------------------

def clear_reported_optouts(integration: str) -> TxFn:
    def tx(c: sqlite3.Connection) -> None:
        c.execute("DELETE FROM apsis_reported_optouts WHERE integration = ?", (integration,))

    return tx


def put_reported_optouts(integration: str, rows: Sequence[tuple[str, str, str, str | None]]) -> TxFn:
    """``(profile_key, topic, channel, modified_at)`` opt-outs as a consent report listed them."""
    values = [(integration, *row) for row in rows]

    def tx(c: sqlite3.Connection) -> None:
        c.executemany("INSERT OR REPLACE INTO apsis_reported_optouts "
                      "(integration, profile_key, topic, channel, modified_at) VALUES (?, ?, ?, ?, ?)", values)

    return tx


def reported_optouts(c: sqlite3.Connection, integration: str, keys: Sequence[str]) -> dict[str, list[Consent]]:
    """The reported opt-outs of ``keys``, as the consents APSIS would list for each profile."""
    out: dict[str, list[Consent]] = {}
    for start in range(0, len(keys), 500):  # SQLite's host-parameter limit
        chunk = list(keys[start:start + 500])
        marks = ",".join("?" * len(chunk))
        for key, topic, channel, modified_at in c.execute(
                f"SELECT profile_key, topic, channel, modified_at FROM apsis_reported_optouts "
                f"WHERE integration = ? AND profile_key IN ({marks})", (integration, *chunk)):
            out.setdefault(key, []).append(Consent(topic, channel, "opt-out", modified_at=modified_at))
    return out


def written_many(integration: str, rows: Sequence[tuple[str, str, str | None]], now: str) -> TxFn:
    """:func:`written` for many profiles at once: ``(key, fingerprint text, Efficy version)`` each."""

    def tx(c: sqlite3.Connection) -> None:
        # another contact linked to one of these profiles loses that link (one statement per chunk of keys:
        # for each key, messaging_id = key and crm_id != key)
        keys = [key for key, _, _ in rows]
        for start in range(0, len(keys), _IN_CHUNK):
            chunk = keys[start:start + _IN_CHUNK]
            c.execute(f"DELETE FROM links WHERE integration = ? AND messaging_id IN ({','.join('?' * len(chunk))}) "
                      "AND crm_id != messaging_id", (integration, *chunk))
        c.executemany(
            "INSERT INTO links (integration, crm_id, messaging_id, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (integration, crm_id) DO UPDATE SET messaging_id = excluded.messaging_id, "
            "updated_at = excluded.updated_at", [(integration, key, key, now) for key, _, _ in rows])
        c.executemany(
            "INSERT INTO fingerprints (integration, record_key, fingerprint, source_version, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (integration, record_key) DO UPDATE SET "
            "fingerprint = excluded.fingerprint, source_version = excluded.source_version, "
            "updated_at = excluded.updated_at", [(integration, key, fp, version, now) for key, fp, version in rows])

    return tx


def replace_query_members(integration: str, tag: str, contact_ids: Iterable[str]) -> TxFn:
    """The members of one tag query as just read (the bulk full sync carries query tags in its imports).

    ``contact_ids`` is consumed row by row (repeats allowed: the table keeps one of each), never copied into a
    list of rows; the transaction answers the number of distinct members."""

    def tx(c: sqlite3.Connection) -> int:
        c.execute("DELETE FROM efficy_query_members WHERE integration = ? AND tag = ?", (integration, tag))
        inserted = c.executemany(
            "INSERT OR IGNORE INTO efficy_query_members (integration, tag, contact_id) VALUES (?, ?, ?)",
            ((integration, tag, cid) for cid in contact_ids))
        return inserted.rowcount

    return tx


def query_tags_of(c: sqlite3.Connection, integration: str, contact_ids: Sequence[str]) -> dict[str, set[str]]:
    """Contact id -> the query tags it is a member of (only members are listed)."""
    out: dict[str, set[str]] = {}
    for start in range(0, len(contact_ids), 500):
        chunk = list(contact_ids[start:start + 500])
        marks = ",".join("?" * len(chunk))
        for cid, tag in c.execute(f"SELECT contact_id, tag FROM efficy_query_members "
                                  f"WHERE integration = ? AND contact_id IN ({marks})", (integration, *chunk)):
            out.setdefault(cid, set()).add(tag)
    return out
