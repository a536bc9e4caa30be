"""Human-readable output of control-command results: tables and a progress bar. Pure functions."""

from __future__ import annotations

from typing import Any


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, v in enumerate(row):
            widths[i] = max(widths[i], len(v))
    lines = ["  ".join(h.upper().ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    for row in cells:
        lines.append("  ".join(v.ljust(widths[i]) for i, v in enumerate(row)).rstrip())
    return "\n".join(lines)


def progress_bar(done: int, total: int | None, width: int = 30) -> str:
    if not total:
        return f"[{'?' * width}] {done} done"
    frac = min(1.0, done / total) if total else 0.0
    filled = int(frac * width)  # floor: never show more than is done
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} ({frac * 100:.1f}%)"


def _short_time(iso: str | None) -> str:
    if not iso:
        return "-"
    return iso.replace("T", " ")[:19]


def counts_line(counts: dict[str, Any] | None) -> str:
    if not counts:
        return "-"
    skipped = counts.get("skipped") or {}
    text = (f"fetched {counts.get('fetched', 0)}, created {counts.get('created', 0)}, "
            f"updated {counts.get('updated', 0)}, unchanged {counts.get('unchanged', 0)}, "
            f"rejected {counts.get('rejected', 0)}, skipped {sum(skipped.values())}")
    return text


def render_status(result: dict[str, Any]) -> str:
    if "daemon" in result:
        d = result["daemon"]
        lines = [
            f"crmsync {d['version']} (pid {d['pid']}), up {d['uptime_s']:.0f}s",
            f"  webhooks:  {d.get('webhooks') or '-'}",
            f"  metrics:   {d.get('metrics') or '-'}",
            f"  control:   {d.get('control_socket') or '-'}",
            f"  store:     {d.get('store')}",
            f"  config:    {d.get('config') or '-'}",
            "",
        ]
        rows = []
        for i in result["integrations"]:
            fs = i.get("full_sync") or {}
            state = ("error" if i.get("error") else "active") if i["active"] else "inactive"
            state += ", paused" if i.get("paused") else ""
            rows.append([
                i["name"], i["kind"], state,
                i.get("queue_depth", 0),
                (fs.get("state") or "-") + (" (required)" if i.get("full_sync_required") else ""),
                _last_runs(i),
            ])
        lines.append(table(["integration", "kind", "state", "queue", "full sync", "last runs"], rows)
                     if rows else "no integrations configured")
        return "\n".join(lines)
    return render_integration(result)


def _last_runs(i: dict[str, Any]) -> str:
    parts = []
    for flow, info in i.get("flows", {}).items():
        last = info.get("last_run")
        if last:
            parts.append(f"{flow}={last['status']}")
    return ", ".join(parts) or "-"


def render_integration(i: dict[str, Any]) -> str:
    lines = [
        f"{i['name']} ({i['kind']}): {'ACTIVE' if i['active'] else 'inactive'}"
        + (f" since {_short_time(i.get('since'))}" if i.get("since") else ""),
    ]
    if i.get("paused"):
        lines.append(f"  PAUSED since {_short_time(i.get('paused_since'))}: timers and the real-time queue are "
                     f"held (webhooks still queued); 'crmsync resume {i['name']}' releases them")
    if i.get("notes"):
        lines.append(f"  notes: {i['notes']}")
    if i.get("error"):
        lines.append(f"  ERROR (restarting with backoff): {i['error']}")
    if i.get("full_sync_required"):
        lines.append(f"  FULL SYNC REQUIRED: {i.get('full_sync_required_reason') or ''}".rstrip())
    fs = i.get("full_sync")
    if fs:
        lines.append(f"  full sync: {fs['state']} (run {fs['run_id']})")
        if fs["state"] == "running":
            rate = fs.get("rate_per_s")
            lines.append("    " + progress_bar(fs["done"], fs.get("total"))
                         + (f"  {rate}/s" if rate is not None else ""))
        else:
            lines.append(f"    {fs['done']} records; finished {_short_time(fs.get('finished_at'))}")
    lines.append(f"  real-time queue: {i.get('queue_depth', 0)} waiting"
                 + (f", {i['dead_letters']} dead letters (oldest received "
                    f"{_short_time(i.get('dead_letters_oldest'))}; 'crmsync dead-letters {i['name']}')"
                    if i.get("dead_letters") else ""))
    rows = []
    for flow, info in i.get("flows", {}).items():
        last = info.get("last_run") or {}
        rows.append([
            flow, info.get("schedule", "-"), "running" if info.get("running") else "",
            last.get("status", "-"), _short_time(last.get("finished_at") or last.get("started_at")),
            _short_time(info.get("next_run")),
        ])
    lines.append("")
    lines.append(table(["flow", "schedule", "now", "last status", "last run", "next run"], rows))
    if i.get("cursors"):
        lines.append("")
        lines.append("  cursors: " + ", ".join(f"{f}={c['value']}" for f, c in i["cursors"].items()))
    if i.get("links") is not None:
        lines.append(f"  linked records: {i['links']}")
    return "\n".join(lines)


def render_runs(result: dict[str, Any]) -> str:
    rows = [[r["id"], r["flow"], r["status"], r.get("trigger", ""), _short_time(r["started_at"]),
             _short_time(r.get("finished_at")), counts_line(r.get("counts"))] for r in result["runs"]]
    if not rows:
        return f"{result['integration']}: no runs yet"
    return table(["id", "flow", "status", "trigger", "started", "finished", "counts"], rows)


def render_report(result: dict[str, Any]) -> str:
    run = result["run"]
    c = result["counts"]
    dry = " [DRY RUN: nothing was written]" if run.get("trigger") == "dry_run" else ""
    lines = [
        f"Synchronization report: {result['integration']}, run {run['id']} ({run['flow']}), {run['status']}{dry}",
        f"  started {_short_time(run['started_at'])}, finished {_short_time(run.get('finished_at'))}",
    ]
    if run.get("error"):
        lines.append(f"  error: {run['error']}")
    lines.append(f"  fetched {c.get('fetched', 0)}  created {c.get('created', 0)}  updated {c.get('updated', 0)}  "
                 f"unchanged {c.get('unchanged', 0)}  rejected {c.get('rejected', 0)}")
    skipped = c.get("skipped") or {}
    if skipped:
        lines.append("  skipped: " + ", ".join(f"{reason} {n}" for reason, n in skipped.items()))
    rows = [[r["seq"], r.get("crm_id") or "", r.get("messaging_id") or "", r["outcome"], r.get("reason") or "",
             (r.get("message") or "")[:80]] for r in result["rows"]]
    if rows:
        lines.append("")
        lines.append(table(["#", "crm id", "messaging id", "outcome", "reason", "message"], rows))
        if result.get("rows_total", len(rows)) > len(rows):
            lines.append(f"... {result['rows_total'] - len(rows)} more rows (use --limit/--offset or --json)")
    return "\n".join(lines)


def render_dead_letters(result: dict[str, Any]) -> str:
    rows = [[d["id"], _short_time(d.get("received_at")), _short_time(d.get("first_attempt_at")),
             _short_time(d.get("last_attempt_at")), (d.get("error") or "")[:60],
             ", ".join(f"{k}={v}" for k, v in (d.get("payload") or {}).items())[:50]]
            for d in result["dead_letters"]]
    if not rows:
        return f"{result['integration']}: no dead letters"
    head = f"{result['integration']}: {result['total']} dead letters, oldest received {_short_time(result['oldest'])}"
    return head + "\n" + table(["id", "received", "first attempt", "last attempt", "error", "event"], rows)


def render_consent_history(result: dict[str, Any]) -> str:
    who = f"person {result['person']}" if result.get("person") else "every person"
    if not result["entries"]:
        return f"{result['integration']}: no consent changes recorded for {who}"
    rows = []
    for e in result["entries"]:
        when = _short_time(e.get("changed_at"))
        if e.get("changed_after"):
            when = f"{_short_time(e['changed_after'])} .. {when}"
        rows.append([e["id"], e["system"], e.get("crm_id") or "", e.get("messaging_id") or "", e["subject"][:40],
                     f"{e.get('old_status') or '?'} -> {e['new_status']}",
                     ("crmsync, from " if e["by_crmsync"] else "") + e.get("source_label", e["source"]),
                     when, _short_time(e.get("seen_at")), e.get("run_id") or ""])
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
                for i, (k, v) in enumerate(looked.items()):  # one line per field, side or value
                    rows.append([r["rule"] if i == 0 else "", f"{k}: {_looked(v, 70)}", r["verdict"] if i == 0 else ""])
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
    rows = [[r["run_id"], r["flow"] + (" (dry)" if r.get("trigger") == "dry_run" else ""), _short_time(r["at"]),
             r["outcome"], r.get("reason") or "", (r.get("message") or "")[:60]] for r in result["report_rows"]]
    lines.append("")
    lines.append(table(["run", "flow", "at", "outcome", "reason", "message"], rows) if rows
                 else "no report rows for this record yet")
    return "\n".join(lines)
