"""Human-readable output of control-command results: a result in, text out (and the live progress display).

Every command has its own rendering (:data:`RENDERERS`); a command without one (a new command, before its
rendering is designed) gets :func:`render_fields`, an aligned list of its fields, never a Python dump. Tables
are rich tables rendered to plain text (no colour, so the output pipes and greps well). Times are shown in the
integration's time zone, labelled (``2026-10-29 02:00:00 EDT``, and the zone's name in the heading).
"""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table

PLAIN_WIDTH = 200  # when not on a terminal: wide enough that table rows are not wrapped


def _width() -> int:
    return shutil.get_terminal_size((PLAIN_WIDTH, 24)).columns


def table(headers: list[str], rows: list[list[Any]], *, width: int | None = None) -> str:
    """A plain-text table: upper-case headings, columns aligned, no borders."""
    t = Table(box=None, show_edge=False, pad_edge=False, header_style="", highlight=False)
    for h in headers:
        t.add_column(h.upper(), overflow="fold")
    for row in rows:
        t.add_row(*[("" if v is None else str(v)) for v in row])
    buf = io.StringIO()
    Console(file=buf, width=width or _width(), color_system=None, force_terminal=False, highlight=False,
            emoji=False, markup=False).print(t)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines() if line.strip())


# -- times -------------------------------------------------------------------------------------------------


def zone(name: str | None) -> ZoneInfo | None:
    try:
        return ZoneInfo(name) if name else None
    except (ZoneInfoNotFoundError, ValueError):
        return None


def local_time(iso: str | None, tz: ZoneInfo | None) -> str:
    """``2026-10-29 00:00:00 EDT``: an ISO time in the integration's zone, with the zone's abbreviation."""
    if not iso:
        return "-"
    try:
        when = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if when.tzinfo is None or tz is None:
        return when.strftime("%Y-%m-%d %H:%M:%S") + (f" {when.tzname()}" if when.tzinfo else "")
    local = when.astimezone(tz)
    return local.strftime("%Y-%m-%d %H:%M:%S ") + (local.tzname() or str(tz))


def duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "-"
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _elapsed(run: dict[str, Any]) -> float | None:
    try:
        return (datetime.fromisoformat(run["finished_at"]) - datetime.fromisoformat(run["started_at"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None


# -- progress ----------------------------------------------------------------------------------------------


def eta_seconds(done: int, total: int | None, rate: float | None) -> float | None:
    if not total or not rate or rate <= 0 or done >= total:
        return None
    return (total - done) / rate


def progress_bar(done: int, total: int | None, width: int = 30) -> str:
    if not total:
        return f"[{'?' * width}] {done} done"
    frac = min(1.0, done / total)
    filled = int(frac * width)  # floor: never show more than is done
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} ({frac * 100:.1f}%)"


def progress_line(done: int, total: int | None, rate: float | None, width: int = 30) -> str:
    """The bar with the rate and the time left: ``[###...] 120/500 (24.0%)  35.2 records/s  ETA 11s``."""
    text = progress_bar(done, total, width)
    if rate is not None:
        text += f"  {rate:.1f} records/s"
    left = eta_seconds(done, total, rate)
    if left is not None:
        text += f"  ETA {duration(left)}"
    return text


class ProgressDisplay:
    """The full-sync progress while ``--watch`` waits: a live rich bar on a terminal (done/total, percent,
    rate, ETA), else a plain progress line each time it moved, at most every ``plain_every_s`` seconds."""

    def __init__(self, name: str, *, live: bool, out: Any, plain_every_s: float = 10.0):
        self.name = name
        self.out = out
        self.plain_every_s = plain_every_s
        self._last_printed: tuple[int, float] | None = None
        self._progress: Progress | None = None
        self._task: Any = None
        if live:
            self._progress = Progress(
                TextColumn(f"{name}: full sync"), BarColumn(), TextColumn("{task.completed}/{task.fields[of]}"),
                TaskProgressColumn(), TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[eta]}"),
                console=Console(file=out), transient=False)

    def __enter__(self) -> ProgressDisplay:
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task("full sync", total=None, rate="", eta="", of="?")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, done: int, total: int | None, rate: float | None, *, final: bool = False) -> None:
        if self._progress is not None:
            left = eta_seconds(done, total, rate)
            self._progress.update(self._task, completed=done, total=total, of=total or "?",
                                  rate=f"{rate:.1f} records/s" if rate is not None else "",
                                  eta=f"ETA {duration(left)}" if left is not None else "")
            return
        now = time.monotonic()
        last = self._last_printed
        if final or last is None or (done != last[0] and now - last[1] >= self.plain_every_s):
            print(f"{self.name}: full sync " + progress_line(done, total, rate), file=self.out, flush=True)
            self._last_printed = (done, now)


# -- counts and runs ---------------------------------------------------------------------------------------


def counts_line(counts: dict[str, Any] | None) -> str:
    if not counts:
        return "-"
    skipped = counts.get("skipped") or {}
    return (f"fetched {counts.get('fetched', 0)}, created {counts.get('created', 0)}, "
            f"updated {counts.get('updated', 0)}, unchanged {counts.get('unchanged', 0)}, "
            f"rejected {counts.get('rejected', 0)}, skipped {sum(skipped.values())}")


def render_run_end(integration: str, run: dict[str, Any], tz: ZoneInfo | None) -> str:
    """How a run ended (``run-flow --wait``, ``full-sync --watch``): status, time, counts, error."""
    lines = [f"{integration}: run {run['id']} ({run['flow']}) {run['status']}"
             + (f" after {duration(_elapsed(run))}" if run.get("finished_at") else "")
             + f", finished {local_time(run.get('finished_at'), tz)}",
             f"  {counts_line(run.get('counts'))}"]
    skipped = (run.get("counts") or {}).get("skipped") or {}
    if skipped:
        lines.append("  skipped: " + ", ".join(f"{reason} {n}" for reason, n in skipped.items()))
    if run.get("error"):
        lines.append(f"  error: {run['error']}")
    lines.append(f"  report: crmsync report {integration} {run['id']}")
    return "\n".join(lines)


# -- status ------------------------------------------------------------------------------------------------


def render_status(result: dict[str, Any]) -> str:
    if "daemon" not in result:
        return render_integration(result)
    d = result["daemon"]
    lines = [
        f"crmsync {d['version']} (pid {d['pid']}), up {duration(d['uptime_s'])}",
        f"  webhooks:  {d.get('webhooks') or '-'}",
        f"  metrics:   {d.get('metrics') or '-'}",
        f"  control:   {d.get('control_socket') or '-'}",
        f"  store:     {d.get('store')}",
        f"  config:    {d.get('config') or '-'}",
        "",
    ]
    rows = []
    problems = []
    for i in result["integrations"]:
        fs = i.get("full_sync") or {}
        state = ("error" if i.get("error") else "active") if i["active"] else "inactive"
        state += ", paused" if i.get("paused") else ""
        full_sync = fs.get("state") or "-"
        if fs.get("state") == "running":
            full_sync = f"running {fs.get('done', 0)}/{fs.get('total') or '?'}"
        rows.append([i["name"], i["kind"], state, i.get("queue_depth", 0),
                     full_sync + (" (required)" if i.get("full_sync_required") else ""), _last_runs(i)])
        if i.get("error"):
            problems.append(f"  {i['name']}: {i['error']} (restarting with backoff; 'crmsync status {i['name']}' "
                            "shows where)")
        for flow, info in i.get("flows", {}).items():
            last = info.get("last_run") or {}
            if last.get("status") == "failed" and last.get("error"):
                problems.append(f"  {i['name']} {flow} run {last['id']} failed: {last['error']}")
    lines.append(table(["integration", "kind", "state", "queue", "full sync", "last runs"], rows)
                 if rows else "no integrations configured")
    if problems:
        lines += ["", "Problems:", *problems]
    return "\n".join(lines)


def _last_runs(i: dict[str, Any]) -> str:
    parts = [f"{flow}={info['last_run']['status']}" for flow, info in i.get("flows", {}).items()
             if info.get("last_run")]
    return ", ".join(parts) or "-"


def render_integration(i: dict[str, Any]) -> str:
    tz = zone(i.get("timezone"))
    lines = [
        f"{i['name']} ({i['kind']}): {'ACTIVE' if i['active'] else 'inactive'}"
        + (f" since {local_time(i.get('since'), tz)}" if i.get("since") else ""),
        f"  times in {i.get('timezone') or 'UTC'}",
    ]
    if i.get("paused"):
        lines.append(f"  PAUSED since {local_time(i.get('paused_since'), tz)}: timers and the real-time queue are "
                     f"held (webhooks still queued); 'crmsync resume {i['name']}' releases them")
    if i.get("notes"):
        lines.append(f"  notes: {i['notes']}")
    if i.get("error"):
        lines.append(f"  ERROR (restarting with backoff): {i['error']}")
        if i.get("error_trace"):
            lines += ["    " + line for line in i["error_trace"].rstrip().splitlines()]
    if i.get("full_sync_required"):
        lines.append(f"  FULL SYNC REQUIRED: {i.get('full_sync_required_reason') or ''}".rstrip())
    fs = i.get("full_sync")
    if fs:
        lines.append(f"  full sync: {fs['state']} (run {fs['run_id']}), started {local_time(fs.get('started_at'), tz)}")
        if fs["state"] == "running":
            lines.append("    " + progress_line(fs["done"], fs.get("total"), fs.get("rate_per_s")))
        else:
            lines.append(f"    {fs['done']} records; {fs['state']} {local_time(fs.get('finished_at'), tz)}")
    nxt = i.get("full_sync_next")
    if nxt and not (fs and fs["state"] == "running"):
        what = "resumes from its checkpoint" if nxt["action"] == "resume" else "starts from the beginning"
        lines.append(f"  next full sync: {what} ({nxt['reason']})")
    lines.append(f"  real-time queue: {i.get('queue_depth', 0)} waiting"
                 + (f", {i['dead_letters']} dead letters (oldest received "
                    f"{local_time(i.get('dead_letters_oldest'), tz)}; 'crmsync dead-letters {i['name']}')"
                    if i.get("dead_letters") else ""))
    rows = []
    failures = []
    for flow, info in i.get("flows", {}).items():
        last = info.get("last_run") or {}
        rows.append([
            flow, info.get("schedule", "-"), "running" if info.get("running") else "",
            last.get("status", "-"), local_time(last.get("finished_at") or last.get("started_at"), tz),
            local_time(info.get("next_run"), tz),
        ])
        if last.get("error") and last.get("status") in ("failed", "cancelled"):
            failures.append(f"  {flow} run {last['id']} {last['status']}: {last['error']}")
    lines.append("")
    lines.append(table(["flow", "schedule", "now", "last status", "last run", "next run"], rows))
    if failures:
        lines += ["", "Why the last runs did not succeed:", *failures]
    if i.get("cursors"):
        lines.append("")
        lines.append("  cursors: " + ", ".join(f"{f}={c['value']}" for f, c in i["cursors"].items()))
    if i.get("links") is not None:
        lines.append(f"  linked records: {i['links']}")
    return "\n".join(lines)


# -- runs and reports --------------------------------------------------------------------------------------


def render_runs(result: dict[str, Any]) -> str:
    tz = zone(result.get("timezone"))
    if not result["runs"]:
        return f"{result['integration']}: no runs yet"
    rows = [[r["id"], r["flow"], r["status"], r.get("trigger", ""), local_time(r["started_at"], tz),
             duration(_elapsed(r)) if r.get("finished_at") else "running", counts_line(r.get("counts"))]
            for r in result["runs"]]
    return (f"{result['integration']}: runs, newest first (times in {result.get('timezone') or 'UTC'})\n"
            + table(["id", "flow", "status", "trigger", "started", "took", "counts"], rows))


def render_report(result: dict[str, Any]) -> str:
    tz = zone(result.get("timezone"))
    run = result["run"]
    c = result["counts"]
    dry = " [DRY RUN: nothing was written]" if run.get("trigger") == "dry_run" else ""
    lines = [
        f"Synchronization report: {result['integration']}, run {run['id']} ({run['flow']}), {run['status']}{dry}",
        f"  started {local_time(run['started_at'], tz)}, finished {local_time(run.get('finished_at'), tz)}",
    ]
    if run.get("error"):
        lines.append(f"  error: {run['error']}")
    lines.append(f"  fetched {c.get('fetched', 0)}  created {c.get('created', 0)}  updated {c.get('updated', 0)}  "
                 f"unchanged {c.get('unchanged', 0)}  rejected {c.get('rejected', 0)}")
    skipped = c.get("skipped") or {}
    if skipped:
        lines.append("  skipped: " + ", ".join(f"{reason} {n}" for reason, n in skipped.items()))
    filters = result.get("filters") or {}
    if filters:
        lines.append("  rows with " + ", ".join(f"{k} {v}" for k, v in filters.items())
                     + f": {result.get('rows_total', 0)}")
    rows = [[r["seq"], r.get("crm_id") or "", r.get("messaging_id") or "", r["outcome"], r.get("reason") or "",
             r.get("message") or ""] for r in result["rows"]]
    if rows:
        lines.append("")
        lines.append(table(["#", "crm id", "messaging id", "outcome", "reason", "message"], rows))
        shown_to = result.get("offset", 0) + len(rows)
        if result.get("rows_total", len(rows)) > shown_to:
            lines.append(f"... {result['rows_total'] - shown_to} more rows (use --limit/--offset or --json)")
    elif filters:
        lines.append("  no rows match")
    return "\n".join(lines)


# -- the other commands ------------------------------------------------------------------------------------


def render_activate(result: dict[str, Any]) -> str:
    name = result["integration"]
    if result["active"]:
        return f"{name}: {'activated' if result.get('changed') else 'already active'}"
    return f"{name}: {'deactivated (its state is kept)' if result.get('changed') else 'already inactive'}"


def render_full_sync(result: dict[str, Any]) -> str:
    how = "resumed from its checkpoint" if result.get("resumed") else "started from the beginning"
    return (f"{result['integration']}: full sync {how} (run {result['run_id']}): {result.get('reason', '')}\n"
            f"  follow it: crmsync status {result['integration']} --watch")


def render_cancel(result: dict[str, Any]) -> str:
    lines = [f"{result['integration']}: cancelled " + ", ".join(
        f"{c['flow']} (run {c['run_id']})" for c in result["cancelled"])]
    nxt = result.get("full_sync_next")
    if nxt:
        what = "resumes from its checkpoint" if nxt["action"] == "resume" else "starts from the beginning"
        lines.append(f"  the next full sync {what}: {nxt['reason']}")
    return "\n".join(lines)


def render_run_flow(result: dict[str, Any]) -> str:
    run = result.get("run")
    if run:
        return render_run_end(result["integration"], run, zone(result.get("timezone")))
    return (f"{result['integration']}: {result['flow']} started (run {result['run_id']})\n"
            f"  its report: crmsync report {result['integration']} {result['run_id']}")


def render_reload(result: dict[str, Any]) -> str:
    def names(key: str) -> str:
        return ", ".join(result.get(key) or []) or "none"

    lines = ["config reloaded",
             f"  restarted (changed): {names('changed')}",
             f"  added: {names('added')}",
             f"  removed: {names('removed')}",
             f"  unchanged: {names('unchanged')}"]
    if result.get("restart_required_for"):
        lines.append(f"  not applied until crmsync restarts: {names('restart_required_for')} settings")
    return "\n".join(lines)


def render_help(result: dict[str, Any]) -> str:
    blocks = []
    for cmd in result["commands"]:
        lines = [f"{cmd['name']}: {cmd['help']}"]
        for arg in cmd["args"]:
            kind = "one of " + ", ".join(arg["choices"]) if arg.get("choices") else arg["type"]
            if "minimum" in arg and "maximum" in arg:
                kind += f" {arg['minimum']}..{arg['maximum']}"
            elif "minimum" in arg:
                kind += f" >= {arg['minimum']}"
            extra = "required" if arg["required"] else (f"default {_value(arg['default'])}" if "default" in arg
                                                        else "optional")
            lines.append(f"    {arg['name']} ({kind}, {extra}): {arg['help']}")
        if not cmd["args"]:
            lines.append("    no arguments")
        blocks.append("\n".join(lines))
    if len(result["commands"]) > 1 and result.get("error_codes"):
        blocks.append("error codes:\n" + "\n".join(f"    {code}: {meaning}"
                                                   for code, meaning in result["error_codes"].items()))
    return "\n\n".join(blocks)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "-"
    if isinstance(v, list | tuple):
        return ", ".join(_value(x) for x in v) or "none"
    return str(v)


def render_fields(result: dict[str, Any], indent: str = "") -> str:
    """Any result as aligned ``field: value`` lines (nested objects indented): for commands with no rendering
    of their own yet."""
    lines = []
    width = max((len(k) for k in result), default=0)
    for key, value in result.items():
        label = key.replace("_", " ")
        if isinstance(value, dict):
            lines.append(f"{indent}{label}:")
            lines.append(render_fields(value, indent + "  ") if value else f"{indent}  none")
        elif isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
            lines.append(f"{indent}{label}:")
            headers = list(dict.fromkeys(k for x in value for k in x))
            lines.append("\n".join(indent + "  " + line for line in
                                   table(headers, [[_value(x.get(h)) for h in headers] for x in value]).splitlines()))
        else:
            lines.append(f"{indent}{label.ljust(width)}  {_value(value)}")
    return "\n".join(lines)


# -- pause, dead letters, consent history, dry runs, explain -----------------------------------------------


def render_pause(result: dict[str, Any]) -> str:
    name = result["integration"]
    if result["paused"]:
        text = (f"{name}: paused since {result.get('since')}: timers and the real-time queue are held; webhooks "
                "are still accepted and kept")
    else:
        text = f"{name}: resumed: the real-time queue drains in arrival order"
    return text + ("" if result.get("changed") else " (no change)")


def render_dead_letters(result: dict[str, Any]) -> str:
    tz = zone(result.get("timezone"))
    rows = [[d["id"], local_time(d.get("received_at"), tz), local_time(d.get("first_attempt_at"), tz),
             local_time(d.get("last_attempt_at"), tz), (d.get("error") or "")[:60],
             ", ".join(f"{k}={v}" for k, v in (d.get("payload") or {}).items())[:50]]
            for d in result["dead_letters"]]
    if not rows:
        return f"{result['integration']}: no dead letters"
    head = (f"{result['integration']}: {result['total']} dead letters, oldest received "
            f"{local_time(result['oldest'], tz)}")
    return head + "\n" + table(["id", "received", "first attempt", "last attempt", "error", "event"], rows)


def render_dead_letters_moved(result: dict[str, Any]) -> str:
    verb, done = ("requeued", result["requeued"]) if "requeued" in result else ("dropped", result["dropped"])
    ids = [str(d["id"] if isinstance(d, dict) else d) for d in done]
    return (f"{result['integration']}: {verb} {len(ids)} dead letter(s)" + (f": {', '.join(ids)}" if ids else "")
            + (f"; not found: {', '.join(map(str, result['not_found']))}" if result.get("not_found") else ""))


def render_consent_history(result: dict[str, Any]) -> str:
    tz = zone(result.get("timezone"))
    who = f"person {result['person']}" if result.get("person") else "every person"
    if not result["entries"]:
        return f"{result['integration']}: no consent changes recorded for {who}"
    rows = []
    for e in result["entries"]:
        when = local_time(e.get("changed_at"), tz)
        if e.get("changed_after"):
            when = f"{local_time(e['changed_after'], tz)} .. {when}"
        rows.append([e["id"], e["system"], e.get("crm_id") or "", e.get("messaging_id") or "", e["subject"][:40],
                     f"{e.get('old_status') or '?'} -> {e['new_status']}",
                     ("crmsync, from " if e["by_crmsync"] else "") + e.get("source_label", e["source"]),
                     when, local_time(e.get("seen_at"), tz), e.get("run_id") or ""])
    head = f"Consent history: {result['integration']}, {who}, oldest first ({result['total']} changes)"
    return head + "\n" + table(["#", "system", "crm id", "messaging id", "consent", "change", "source",
                                 "at source", "seen", "run"], rows)


def render_dry_run(result: dict[str, Any]) -> str:
    lines = [render_report(result), "",
             f"Dry run: {result['intended_writes_total']} write call(s) withheld; no link, cursor or fingerprint "
             "changed."]
    writes = result.get("intended_writes") or []
    if writes:
        rows = [[w["system"], w["call"], w.get("target") or "", w["summary"][:90]] for w in writes[:200]]
        lines.append(table(["system", "call", "target", "would write"], rows))
        if result["intended_writes_total"] > len(rows):
            lines.append(f"... {result['intended_writes_total'] - len(rows)} more (--json shows the first 1000)")
    return "\n".join(lines)


def _looked(value: Any, limit: int = 70) -> str:
    if isinstance(value, dict):
        text = ", ".join(f"{k}={_looked(v, 40)}" for k, v in value.items())
    elif value is None:
        text = "-"
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def render_explain(result: dict[str, Any]) -> str:
    tz = zone(result.get("timezone"))
    lines = [f"Explain: {result['integration']} ({result['kind']}), record {result['record']}"
             + (f" (found by {result['found_by']})" if result.get("found_by") else ""),
             f"  crm id: {result.get('crm_id') or '-'}   messaging id: {result.get('messaging_id') or '-'}"]
    for section in result["sections"]:
        frm, to = section["from"], section["to"]
        lines += ["", f"{section['flow']}: {frm['system']} {frm['id']} -> {to['system']} {to['id'] or '(none yet)'}"]
        rows = []
        for r in section["rules"]:
            looked = r["looked_at"]
            if isinstance(looked, dict) and looked and (all(isinstance(v, dict) for v in looked.values())
                                                        or len(_looked(looked, 1000)) > 70):
                for n, (k, v) in enumerate(looked.items()):  # one line per field, side or value
                    rows.append([r["rule"] if n == 0 else "", f"{k}: {_looked(v, 70)}", r["verdict"] if n == 0 else ""])
            else:
                rows.append([r["rule"], _looked(looked), r["verdict"]])
            if r.get("note"):
                rows.append(["", f"  ({r['note']})", ""])
        lines.append(table(["rule", "looked at", "verdict"], rows))
        v = section["verdict"]
        lines.append(f"  VERDICT: {v['outcome']}" + (f" ({v['reason']})" if v.get("reason") else "")
                     + (f": {v['message']}" if v.get("message") else ""))
        if v.get("would_write"):
            lines.append("  a sync would write:")
            lines += [f"    {w['system']} {w['call']} {w.get('target') or ''}: {w['summary']}"
                      for w in v["would_write"]]
        else:
            lines.append("  a sync would write nothing")
    rows = [[r["run_id"], r["flow"] + (" (dry)" if r.get("trigger") == "dry_run" else ""), local_time(r["at"], tz),
             r["outcome"], r.get("reason") or "", (r.get("message") or "")[:60]] for r in result["report_rows"]]
    lines.append("")
    lines.append(table(["run", "flow", "at", "outcome", "reason", "message"], rows) if rows
                 else "no report rows for this record yet")
    return "\n".join(lines)


Renderer = Callable[[dict[str, Any]], str]
RENDERERS: dict[str, Renderer] = {
    "status": render_status,
    "activate": render_activate,
    "deactivate": render_activate,
    "full_sync": render_full_sync,
    "cancel": render_cancel,
    "run_flow": render_run_flow,
    "runs": render_runs,
    "report": render_report,
    "reload": render_reload,
    "help": render_help,
    "pause": render_pause,
    "resume": render_pause,
    "dead_letters": render_dead_letters,
    "requeue": render_dead_letters_moved,
    "drop": render_dead_letters_moved,
    "consent_history": render_consent_history,
    "explain": render_explain,
}


def render(command: str, result: dict[str, Any]) -> str:
    if result.get("dry_run"):
        return render_dry_run(result)
    return RENDERERS.get(command, render_fields)(result)
