"""The ``tags`` flow: APSIS tags from Efficy saved queries and CRM Profiles (daily by default, and after
every full sync).

For each ``[tags.queries]`` entry, the query's contacts get the tag and those that left it lose it; the same
for each ``[tags.profiles]`` entry with the contacts holding the CRM Profile. The members crmsync tagged are
kept in the store, so leavers are found without reading APSIS. Profile tags are also part of each contact's
payload (real-time and full syncs set them); reconciling them here too repairs a missed webhook.

Only linked profiles (synced at least once) are tagged; members that were never synced (e.g. failing the
sync conditions) are reported as skipped ``not_synced``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from functools import partial

import structlog

from crmsync.connectors.apsis import ApsisClient, ApsisProfile
from crmsync.connectors.efficy import EfficyClient
from crmsync.connectors.errors import AuthError, FatalApiError
from crmsync.daemon.integrations.efficy_apsis import store
from crmsync.daemon.integrations.efficy_apsis.rules import retag
from crmsync.daemon.integrations.efficy_apsis.writer import Written, bounded_map
from crmsync.daemon.runs import RunContext

log = structlog.get_logger("crmsync.daemon.integrations.efficy_apsis.tags")

CHUNK = 500


async def run_tags(run: RunContext, *, efficy: EfficyClient, apsis: ApsisClient, queries: dict[str, int],
                   integration: str, concurrency: int, profiles: dict[str, int] | None = None) -> None:
    sources: list[tuple[str, Callable[[], Awaitable[Iterable[str]]]]] = [
        *((tag, partial(efficy.query_members, qid)) for tag, qid in sorted(queries.items())),
        *((tag, partial(efficy.profile_members, pid)) for tag, pid in sorted((profiles or {}).items())),
    ]
    for tag, list_members in sources:
        # the members (packed, repeats possible) go straight into the store with the contacts tagged before:
        # the flow then holds one chunk of candidates at a time, never a set of every member
        members = await run.db.tx(store.stage_tag_candidates(run.run_id, integration, tag, await list_members()))
        run.fetched(members)
        after = store.CANDIDATES_START
        while page := await run.db.tx(store.tag_candidates_page, run.run_id, integration, tag, after, CHUNK):
            after = page[-1][:2]
            member_of = {cid: member for _, cid, member in page}
            chunk = list(member_of)
            states = await run.db.tx(store.load_states, integration, chunk, ())

            async def one(cid: str, states: dict[str, store.ContactState] = states, tag: str = tag,
                          member_of: dict[str, bool] = member_of) -> Written:
                return await _retag(cid, states[cid], tag, member_of[cid], apsis, integration, run.now_iso())

            # most candidates need no call (a bulk full sync carried their tag in its import): those are
            # decided here, and only the others become tasks
            decided = [_settled(cid, states[cid], tag, member_of[cid]) for cid in chunk]
            calls = iter(await bounded_map(one, [cid for cid, w in zip(chunk, decided, strict=True) if w is None],
                                           concurrency))
            results = [w if w is not None else next(calls) for w in decided]
            tx: list[store.TxFn] = []
            tagged: list[str] = []
            untagged: list[str] = []
            for w in results:
                w.report(run)
                tx.extend(w.tx)
                if w.outcome in ("updated", "unchanged"):
                    (tagged if member_of[w.contact_id] else untagged).append(w.contact_id)
                elif w.outcome == "skipped":
                    untagged.append(w.contact_id)
            # who holds the tag is recorded with the chunk's writes, once APSIS acknowledged them: a crash
            # later in the run keeps it
            await run.flush(*tx, store.record_tagged(integration, tag, tagged, untagged))
        await run.db.tx(store.drop_tag_candidates(run.run_id, integration, tag))
        log.info("tag_synced", tag=tag, members=members,
                 tagged=await run.db.tx(store.count_tagged, integration, tag))


def _settled(cid: str, state: store.ContactState, tag: str, member: bool) -> Written | None:
    """The outcome of a contact whose tag needs no APSIS call, else None."""
    if not state.linked or state.current is None:
        return Written("skipped", cid, reason="not_synced")
    if retag(state.current.tags, tag, member) == state.current.tags:
        return Written("unchanged", cid)
    return None


async def _retag(cid: str, state: store.ContactState, tag: str, member: bool, apsis: ApsisClient,
                 integration: str, now: str) -> Written:
    settled = _settled(cid, state, tag, member)
    if settled is not None:
        return settled
    assert state.current is not None
    have = state.current.tags
    want = retag(have, tag, member)
    try:
        await apsis.patch_tags(cid, want - have, have - want)
    except AuthError:
        raise
    except FatalApiError as exc:
        return Written("rejected", cid, message=exc.message)
    updated = ApsisProfile(cid, state.current.attributes, state.current.consents, want)
    return Written("updated", cid, tx=[store.written(integration, updated, state.written_version, now)])
