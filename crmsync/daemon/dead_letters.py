"""The operator's side of dead letters (control commands ``dead_letters``, ``requeue``, ``drop``).

A dead letter is a real-time event set aside after failing for a non-transient reason
(``runtime.REALTIME_MAX_EVENT_ATTEMPTS`` times). Once the cause is fixed (a config change, a new version),
``requeue`` puts it back at the end of the queue; ``drop`` removes it for good and logs who did it (the
control server binds the caller's uid and pid to every log line of a state-changing command).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from crmsync.state import dead_letters as dl
from crmsync.state import queries as q

if TYPE_CHECKING:
    from crmsync.daemon.supervisor import Supervisor

log = structlog.get_logger("crmsync.daemon.dead_letters")


def _ids(ids: Any) -> list[int]:
    from crmsync.daemon.supervisor import CommandError

    if isinstance(ids, int | str):
        ids = [ids]
    if not isinstance(ids, list) or not ids:
        raise CommandError("bad_request", "ids: a list of dead-letter ids (see 'crmsync dead-letters NAME')")
    try:
        return [int(i) for i in ids]
    except (TypeError, ValueError):
        raise CommandError("bad_request", f"dead-letter ids are numbers, not {ids!r}") from None


def _webhooks(sup: Supervisor, name: str) -> None:
    from crmsync.daemon.supervisor import CommandError

    if not sup._kind(name).supports_webhooks:
        raise CommandError("unsupported", f"{sup.kinds[name].kind} has no real-time queue")


async def list_dead_letters(sup: Supervisor, name: str, limit: int = 1000, offset: int = 0) -> dict[str, Any]:
    _webhooks(sup, name)

    def read(c: Any) -> dict[str, Any]:
        return {"integration": name, "total": q.count_dead_letters(c, name), "oldest": dl.oldest_dead(c, name),
                "dead_letters": dl.list_dead(c, name, max(1, min(int(limit), 100_000)), max(0, int(offset)))}

    return await sup.db.tx(read)


async def requeue(sup: Supervisor, name: str, ids: Any = None, all_: bool = False) -> dict[str, Any]:
    from crmsync.daemon.supervisor import CommandError

    _webhooks(sup, name)
    now = sup.clock.now().isoformat()

    def move(c: Any) -> tuple[list[dict[str, int]], list[int], int]:
        wanted = dl.dead_ids(c, name) if all_ else _ids(ids)
        moved = dl.requeue(c, name, wanted, now)
        return moved, wanted, q.queue_depth(c, name)

    moved, wanted, depth = await sup.db.tx(move)
    missing = sorted(set(wanted) - {m["id"] for m in moved})
    if missing and not moved:
        raise CommandError("unknown_dead_letter", f"{name!r} has no dead letter {', '.join(map(str, missing))}")
    sup.queue_depth.load({name: depth})
    runtime = sup.runtimes.get(name)
    if runtime is not None:
        runtime.wake_queue()
    log.info("dead_letters_requeued", integration=name, ids=[m["id"] for m in moved])
    return {"integration": name, "requeued": moved, "not_found": missing}


async def drop(sup: Supervisor, name: str, ids: Any) -> dict[str, Any]:
    from crmsync.daemon.supervisor import CommandError

    _webhooks(sup, name)
    wanted = _ids(ids)
    dropped = await sup.db.tx(dl.drop, name, wanted)
    missing = sorted(set(wanted) - {d["id"] for d in dropped})
    if missing and not dropped:
        raise CommandError("unknown_dead_letter", f"{name!r} has no dead letter {', '.join(map(str, missing))}")
    for d in dropped:
        log.warning("dead_letter_dropped", integration=name, id=d["id"], error=d["error"], payload=d["payload"])
    return {"integration": name, "dropped": [d["id"] for d in dropped], "not_found": missing}
