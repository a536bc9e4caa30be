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
from itertools import chain

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
    # a query's members come packed (ContactIds, repeats possible): the set below is their only copy as strings
    sources: list[tuple[str, Callable[[], Awaitable[Iterable[str]]]]] = [
        *((tag, partial(efficy.query_members, qid)) for tag, qid in sorted(queries.items())),
        *((tag, partial(efficy.profile_members, pid)) for tag, pid in sorted((profiles or {}).items())),
    ]
    for tag, list_members in sources:
        members = set(await list_members())
        previous = await run.db.tx(store.get_members, integration, tag)
        # no union set, no copy of the previous members: at 100,000 members each was megabytes at the peak
        candidates = sorted(chain(members, (cid for cid in previous if cid not in members)),
                            key=lambda k: (len(k), k))
        run.fetched(len(members))
        tagged = previous  # updated in place from here on
        for start in range(0, len(candidates), CHUNK):
            chunk = candidates[start:start + CHUNK]
            states = await run.db.tx(store.load_states, integration, chunk, ())

            async def one(cid: str, states: dict[str, store.ContactState] = states, tag: str = tag,
                          members: set[str] = members) -> Written:
                return await _retag(cid, states[cid], tag, cid in members, apsis, integration, run.now_iso())

            # most candidates need no call (a bulk full sync carried their tag in its import): those are
            # decided here, and only the others become tasks
            decided = [_settled(cid, states[cid], tag, cid in members) for cid in chunk]
            calls = iter(await bounded_map(one, [cid for cid, w in zip(chunk, decided, strict=True) if w is None],
                                           concurrency))
            results = [w if w is not None else next(calls) for w in decided]
            tx: list[store.TxFn] = []
            for w in results:
                w.report(run)
                tx.extend(w.tx)
                if w.outcome in ("updated", "unchanged"):
                    (tagged.add if w.contact_id in members else tagged.discard)(w.contact_id)
                elif w.outcome == "skipped":
                    tagged.discard(w.contact_id)
            await run.flush(*tx)
        await run.flush(store.set_members(integration, tag, tagged))
        log.info("tag_synced", tag=tag, members=len(members), tagged=len(tagged))


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
