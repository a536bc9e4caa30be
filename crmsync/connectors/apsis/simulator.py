"""An in-memory APSIS One: the stand-in for tests, benchmarks and ``crmsync sandbox``.

It reproduces what the research (``efficy_apsis.md`` §4–§10) says the real API does, because a test that
passes against a lenient simulator is a bug waiting in production:

* ``POST /oauth/token`` issues JWT-shaped tokens with ``exp`` and ``expires_in`` = 24 h of *clock* time, and
  allows 10 token requests a minute (429 beyond);
* every other call needs ``Authorization: Bearer``; unknown tokens get 401, expired ones 401 (or 403 with
  ``expired_token_status=403``: APSIS has been seen answering expired tokens with 403);
* 100 requests per second of clock time per account (429 beyond), bodies above 100 kB get 413;
* profile create 201/409; v2 attributes merge-patch 204 and 404 for unknown profiles (v2 never creates),
  400 "expects an international phone number" for a phone attribute (``phone_attributes``) not in E.164
  form (research §9.4), the whole patch refused;
  Consent 2.0 writes 201 new / 204 changed / 409 same state, 403 on keyspaces without
  ``manage_subscriptions``; tags merge-patch; imports with their own limits (10 creations a minute, 3
  pending at once), a fake S3 pre-signed multipart upload, and a status that moves
  ``waiting_for_file → queued → in_progress → completed`` over polls;
* consent reports (E1): ``POST /audience/profiles/reports/consents`` snapshots the matching consents at
  creation and answers 202 with an absolute ``poll_url``; the URL answers 404 (problem+json) for the first
  ``report_polls_until_ready`` polls, then 200 with the CSV *streamed* in chunks (gzip-encoded when the
  request accepts gzip), and 410 once ``report_lifetime`` (1 day) of clock time has passed;
* profile merge (P9): ``PUT /audience/profiles/merges`` joins two profiles into one (both keys then reach
  the same data), creating missing ones; 409 when the result would hold two keys in one keyspace;
* errors are problem+json ``{"title", "status", "detail"}``.

Plain methods (``profile``, ``consents_of``, ``opt_out``, ``writes`` ...) let tests and the sandbox inspect
and poke the state without HTTP. Time comes from a :class:`~crmsync.clock.WallClock`, so tests under trio's
MockClock can move through a day.

The class is split by concern: routes and handlers here, bulk imports in :mod:`.sim_imports`, limits, auth
and faults in :mod:`.sim_limits`, state and its helpers in :mod:`.sim_state`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import re
import zlib
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import unquote

import structlog

from crmsync.clock import WallClock
from crmsync.connectors.apsis.records import (
    ATTR_MOBILE,
    CHANNELS,
    MAX_BODY_BYTES,
    MAX_IMPORT_FILE_BYTES,
    SECTION_DEFAULT,
    WRITABLE_CONSENT_TYPES,
    ConsentReportColumns,
    is_international_phone,
)
from crmsync.connectors.apsis.sim_imports import ApsisImports
from crmsync.connectors.apsis.sim_state import (
    DEFAULT_ATTRIBUTES,
    DEFAULT_KEYSPACES,
    DEFAULT_TAGS,
    DEFAULT_TOPICS,
    REPORT_PATH,
    S3_PATH,
    TOKEN_LIFETIME,
    Route,
    StreamedResponse,
    _Import,
    _later,
    _Problem,
    _Report,
    _SectionData,
    _version_id,
    problem,
)
from crmsync.connectors.simkit import (
    Request,
    Response,
)

log = structlog.get_logger("crmsync.connectors.apsis.simulator")

_SEG = r"([^/]+)"


class ApsisSimulator(ApsisImports):
    """The APSIS One simulator. See the module docstring for what it reproduces.

    ``public_url`` is the base URL clients reach the simulator at; the fake S3 upload URL handed out by
    imports lives there too (set it when serving on a real port, as the sandbox does).

    Settings resting on unverified facts ([U] in the research): ``expired_token_status`` (401, or 403 as
    seen by some clients), ``retry_after_on_429`` (Retry-After is undocumented: none by default),
    ``upload_url_lifetime`` (pre-signed URL validity), ``import_polls_per_step`` (how fast imports move),
    and the tag value encoding (``true`` adds, ``false``/``null`` remove). ``clear_existing_attributes`` in
    imports is read as "empty cells clear the attribute", also [U]. Consent reports: the creation answer
    (202 ``{"report_id", "poll_url", "expires_at"}`` + ``Location``), ``report_polls_until_ready``,
    ``report_lifetime`` and the CSV columns (``report_columns``, the client's defaults) are all [U]; the
    body is read as the research lists it (``section_discriminator``, ``topic_discriminators``,
    ``channel_discriminator`` or ``channels[{field_name, channel_discriminator}]``) plus an optional
    ``keyspace_discriminator`` limiting rows to one keyspace. Merge semantics beyond "2xx, 409 on conflict,
    creates missing profiles" are [U]: see :meth:`_merge_profiles`.
    """

    def __init__(
        self,
        clock: WallClock | None = None,
        *,
        client_id: str = "sim-client",
        client_secret: str = "sim-secret",
        public_url: str = "http://sim.test",
        keyspaces: Iterable[Mapping[str, Any]] = DEFAULT_KEYSPACES,
        sections: Iterable[str] = (SECTION_DEFAULT,),
        attributes: Iterable[tuple[str, str, str]] = DEFAULT_ATTRIBUTES,
        topics: Iterable[tuple[str, str, str]] = DEFAULT_TOPICS,
        tags: Iterable[tuple[str, str]] = DEFAULT_TAGS,
        token_lifetime: int = TOKEN_LIFETIME,
        expired_token_status: int = 401,
        max_body_bytes: int = MAX_BODY_BYTES,
        requests_per_second: int = 100,
        token_requests_per_minute: int = 10,
        imports_per_minute: int = 10,
        max_pending_imports: int = 3,
        import_polls_per_step: int = 1,
        upload_url_lifetime: float = 3600.0,
        max_import_file_bytes: int = MAX_IMPORT_FILE_BYTES,
        retry_after_on_429: float | None = None,
        report_polls_until_ready: int = 2,
        report_lifetime: float = 86400.0,
        report_columns: ConsentReportColumns = ConsentReportColumns(),
        report_chunk_rows: int = 200,
        phone_attributes: Iterable[str] = (ATTR_MOBILE,),
        import_tag_mapping_key: str = "tag_mappings",
        import_tag_field: str = "tag_discriminator",
        import_rows_per_second: float | None = None,
        latency: float = 0.0,
    ):
        super().__init__()
        self.clock = clock or WallClock()
        self.client_id = client_id
        self._client_secret = client_secret
        self.public_url = public_url.rstrip("/")
        self.keyspaces = {str(k["discriminator"]): dict(k) for k in keyspaces}
        self.sections = list(sections)
        self.attributes: dict[str, dict[str, Any]] = {d: {"discriminator": d, "name": n, "type": t,
                               "versions": [{"id": _version_id(d), "deprecated_at": None}]}
                           for d, n, t in attributes}
        self.topics = {d: {"discriminator": d, "name": n, "folder_discriminator": f} for d, n, f in topics}
        self.tag_definitions = {d: {"discriminator": d, "name": n} for d, n in tags}
        self.token_lifetime = token_lifetime
        self.expired_token_status = expired_token_status
        self.max_body_bytes = max_body_bytes
        self.requests_per_second = requests_per_second
        self.token_requests_per_minute = token_requests_per_minute
        self.imports_per_minute = imports_per_minute
        self.max_pending_imports = max_pending_imports
        self.import_polls_per_step = import_polls_per_step
        self.upload_url_lifetime = upload_url_lifetime
        self.max_import_file_bytes = max_import_file_bytes
        #: Retry-After is not documented for APSIS ([U]); None sends none, a number sends that many seconds.
        self.retry_after_on_429 = retry_after_on_429
        self.report_polls_until_ready = report_polls_until_ready
        self.report_lifetime = report_lifetime
        self.report_columns = report_columns
        self.report_chunk_rows = report_chunk_rows
        #: attributes APSIS validates as phone numbers: a value not in international form is refused (400)
        self.phone_attributes = frozenset(phone_attributes)
        #: [U] how an import maps tag columns: ``{key: [{"field_selector", field: tag}]}``, cells ``1`` add,
        #: ``0`` remove, empty leave alone (no public source shows it; the client's settings match)
        self.import_tag_mapping_key = import_tag_mapping_key
        #: [U] APSIS's import speed is not published. None: an import moves one status per
        #: ``import_polls_per_step`` polls (tests); a number: it completes that many rows a second of clock
        #: time after its upload (benchmarks, the sandbox), however often it is polled.
        self.import_rows_per_second = import_rows_per_second
        self.latency = latency
        self.import_tag_field = import_tag_field

        self._profiles: dict[tuple[str, str], dict[str, _SectionData]] = {}
        self._tokens: dict[str, float] = {}  # token -> expiry timestamp (clock)
        self._token_seq = itertools.count(1)
        self._signing_key = hashlib.sha256(b"apsis-sim:" + client_secret.encode()).digest()
        self._api_window: deque[float] = deque()
        self._token_window: deque[float] = deque()
        self._import_window: deque[float] = deque()
        self._imports: dict[str, _Import] = {}
        self._import_seq = itertools.count(1)

        self.writes: Counter[str] = Counter()  # write calls received, by operation
        self.token_requests = 0  # every call to /oauth/token
        self.tokens_issued = 0
        self.rate_limited = 0  # 429s answered by the simulator's own limits (not injected faults)
        self.max_concurrent_imports_seen = 0
        self.in_flight = 0  # requests being answered now
        self.max_in_flight = 0
        self._reports: dict[str, _Report] = {}
        self._report_seq = itertools.count(1)
        self.report_requests = 0  # consent report creations (not profile writes, so not in ``writes``)
        self.report_chunks_sent = 0  # body chunks of report downloads sent so far
        self.report_downloads_completed = 0  # report bodies sent to the end

        p = r"/audience/keyspaces/" + _SEG + r"/profiles/" + _SEG + r"/sections/" + _SEG
        self._routes: list[tuple[str, re.Pattern[str], Route]] = [
            ("GET", re.compile(r"/audience/keyspaces"), self._list_keyspaces),
            ("GET", re.compile(r"/audience/sections"), self._list_sections),
            ("GET", re.compile(r"/audience/sections/" + _SEG + r"/attributes"), self._list_attributes),
            ("GET", re.compile(r"/v2/audience/sections/" + _SEG + r"/topics"), self._list_topics),
            ("GET", re.compile(r"/audience/sections/" + _SEG + r"/tags"), self._list_tags),
            ("POST", re.compile(r"/audience/keyspaces/" + _SEG + r"/sections/" + _SEG + r"/profiles"),
             self._create_profile),
            ("PATCH", re.compile(r"/v2" + p + r"/attributes"), self._patch_attributes),
            ("POST", re.compile(r"/v2" + p + r"/consents"), self._post_consent),
            ("GET", re.compile(r"/v2" + p + r"/consents"), self._get_consents),
            ("PATCH", re.compile(p + r"/tags"), self._patch_tags),
            ("GET", re.compile(p + r"/tags"), self._get_tags),
            ("DELETE", re.compile(r"/audience/keyspaces/" + _SEG + r"/profiles/" + _SEG),
             self._delete_profile),
            ("POST", re.compile(r"/v2/audience/sections/" + _SEG + r"/imports"), self._create_import),
            ("GET", re.compile(r"/audience/sections/" + _SEG + r"/imports/" + _SEG), self._get_import),
            ("POST", re.compile(REPORT_PATH), self._create_report),
            ("GET", re.compile(REPORT_PATH + "/" + _SEG), self._get_report),
            ("PUT", re.compile(r"/audience/profiles/merges"), self._merge_profiles),
        ]

    async def handle(self, request: Request) -> Response:
        try:
            return await self._dispatch(request)
        except _Problem as exc:
            return problem(exc.status, exc.title, exc.detail, exc.headers)

    async def _dispatch(self, request: Request) -> Response:
        now = self.clock.timestamp()
        if request.path == S3_PATH and request.method == "POST":
            return self._s3_upload(request, now)
        if len(request.body) > self.max_body_bytes:
            raise _Problem(413, "Payload too large",
                           f"Request body is {len(request.body)} bytes; the limit is 100 kB")
        if request.path == "/oauth/token" and request.method == "POST":
            return self._token(request, now)
        self._throttle(self._api_window, now, 1.0, self.requests_per_second, "API rate limit exceeded")
        self._authenticate(request, now)
        for method, pattern, route in self._routes:
            match = pattern.fullmatch(request.path)
            if match is not None and method == request.method:
                args = [unquote(g) for g in match.groups()]
                return await route(request, *args)
        if any(pattern.fullmatch(request.path) for _, pattern, _ in self._routes):
            raise _Problem(405, "Method not allowed")
        raise _Problem(404, "Not found", f"No resource at {request.path}")

    # -- definitions -------------------------------------------------------------------------------------

    async def _list_keyspaces(self, request: Request) -> Response:
        items = [{"discriminator": d, "name": k.get("name", d),
                  "manage_subscriptions": bool(k.get("manage_subscriptions"))}
                 for d, k in self.keyspaces.items()]
        return Response.json({"items": items})

    async def _list_sections(self, request: Request) -> Response:
        items = [{"discriminator": s, "name": s.rsplit(".", 1)[-1]} for s in self.sections]
        return Response.json({"items": items})

    async def _list_attributes(self, request: Request, section: str) -> Response:
        self._section(section)
        return Response.json({"items": list(self.attributes.values())})

    async def _list_topics(self, request: Request, section: str) -> Response:
        self._section(section)
        return Response.json({"items": list(self.topics.values())})

    async def _list_tags(self, request: Request, section: str) -> Response:
        self._section(section)
        return Response.json({"items": list(self.tag_definitions.values())})

    # -- profiles ----------------------------------------------------------------------------------------

    async def _create_profile(self, request: Request, keyspace: str, section: str) -> Response:
        self.writes["create_profile"] += 1
        self._keyspace(keyspace, write=True)
        self._section(section)
        key = self._json_object(request).get("profile_key")
        if not isinstance(key, str | int) or isinstance(key, bool) or str(key) == "":
            raise _Problem(400, "Bad request", "profile_key is required")
        if (keyspace, str(key)) in self._profiles:
            raise _Problem(409, "Conflict", "Profile already exists")
        self._ensure(keyspace, str(key), section)
        return Response.empty(201)

    async def _patch_attributes(self, request: Request, keyspace: str, key: str, section: str) -> Response:
        self.writes["patch_attributes"] += 1
        self._keyspace(keyspace, write=True)
        self._section(section)
        patch = self._merge_patch(request)
        unknown = [name for name in patch if name not in self.attributes]
        if unknown:
            raise _Problem(400, "Validation failed", f"Unknown attribute(s): {', '.join(sorted(unknown))}")
        bad_phones = sorted(name for name, value in patch.items()
                            if name in self.phone_attributes and value is not None
                            and not is_international_phone(value))
        if bad_phones:
            raise _Problem(400, "Validation failed",
                           f"Attribute {bad_phones[0]} expects an international phone number (e.g. +46700000000)")
        data = self._existing(keyspace, key, section)
        for name, value in patch.items():
            if value is None:
                data.attributes.pop(name, None)
            else:
                data.attributes[name] = value
        return Response.empty(204)

    async def _delete_profile(self, request: Request, keyspace: str, key: str) -> Response:
        self.writes["delete_profile"] += 1
        self._keyspace(keyspace, write=True)
        data = self._profiles.get((keyspace, key))
        if data is None:
            raise _Problem(404, "Not found", "Profile does not exist")
        for ref in self._keys_of(data):  # a merged profile goes with all its keys
            del self._profiles[ref]
        return Response.empty(204)

    async def _merge_profiles(self, request: Request) -> Response:
        """P9. Reading of the research (details [U]): the two profiles become one that answers to both keys;
        missing profiles are created; 409 when the merged profile would carry two different keys in one
        keyspace (so two keys of the *same* keyspace never merge); merging a profile with itself is a
        no-op. Data: attributes of the first win, the second fills gaps; per consent slot the later
        ``modified_at`` wins (a tie goes to opt-out); tags are united. Locks (P11) are not simulated."""
        self.writes["merge_profiles"] += 1
        body = self._json_object(request)
        items = body.get("profiles")
        refs: list[tuple[str, str]] = []
        if isinstance(items, list):
            for item in items:
                if not isinstance(item, dict):
                    break
                ks, key = item.get("keyspace_discriminator"), item.get("profile_key")
                if not isinstance(ks, str) or not isinstance(key, str | int) or isinstance(key, bool) \
                        or str(key) == "":
                    break
                refs.append((ks, str(key)))
        if len(refs) != 2 or len(items or []) != 2:
            raise _Problem(400, "Validation failed",
                           "profiles must list two {keyspace_discriminator, profile_key} objects")
        for ks, _ in refs:
            self._keyspace(ks, write=True)
        if refs[0] == refs[1]:
            raise _Problem(400, "Validation failed", "Two different profiles are needed to merge")
        first, second = self._profiles.get(refs[0]), self._profiles.get(refs[1])
        if first is not None and first is second:
            return Response.empty(204)  # already one profile
        keys = (self._keys_of(first) if first is not None else {refs[0]}) | \
            (self._keys_of(second) if second is not None else {refs[1]})
        by_keyspace: dict[str, set[str]] = {}
        for ks, key in keys:
            by_keyspace.setdefault(ks, set()).add(key)
        clash = sorted(ks for ks, ks_keys in by_keyspace.items() if len(ks_keys) > 1)
        if clash:
            raise _Problem(409, "Conflict",
                           f"Profiles have different keys in keyspace {clash[0]} and cannot be merged")
        merged: dict[str, _SectionData]
        if first is not None:
            merged, other = first, second
        else:
            merged, other = (second if second is not None else {}), None
        for section, theirs in (other or {}).items():
            mine = merged.setdefault(section, _SectionData())
            for name, value in theirs.attributes.items():
                mine.attributes.setdefault(name, value)
            for slot, consent in theirs.consents.items():
                have = mine.consents.get(slot)
                if have is None or _later(consent, have):
                    mine.consents[slot] = dict(consent)
            mine.tags |= theirs.tags
        if not merged:
            merged[SECTION_DEFAULT] = _SectionData()
        for ks, key in keys:
            self._profiles[(ks, key)] = merged
            key_attr = self.keyspaces.get(ks, {}).get("key_attribute")
            if key_attr:
                for data in merged.values():
                    data.attributes.setdefault(key_attr, key)
        return Response.empty(204)

    # -- consents ----------------------------------------------------------------------------------------

    async def _post_consent(self, request: Request, keyspace: str, key: str, section: str) -> Response:
        self.writes["consent"] += 1
        self._keyspace(keyspace, consents=True)
        self._section(section)
        body = self._json_object(request)
        topic, channel, kind = (body.get("topic_discriminator"), body.get("channel_discriminator"),
                                body.get("type"))
        if topic not in self.topics:
            raise _Problem(400, "Validation failed", f"Unknown topic {topic}")
        if channel not in CHANNELS:
            raise _Problem(400, "Validation failed", f"Unknown channel {channel}")
        if kind not in WRITABLE_CONSENT_TYPES:
            raise _Problem(400, "Validation failed", f"Consent type {kind} cannot be set via the API")
        data = self._existing(keyspace, key, section)
        previous = data.consents.get((topic, channel))
        if previous is not None and previous["type"] == kind:
            raise _Problem(409, "Conflict", "Transition not supported")
        self._set_consent(data, topic, channel, kind, source=body.get("source"), reason=body.get("reason"))
        return Response.empty(201 if previous is None else 204)

    async def _get_consents(self, request: Request, keyspace: str, key: str, section: str) -> Response:
        self._keyspace(keyspace)
        self._section(section)
        wanted = {v for k, v in request.query_list if k == "consent_types"}
        data = self._existing(keyspace, key, section)
        items = [dict(c) for c in data.consents.values() if not wanted or c["type"] in wanted]
        return Response.json({"items": items})

    # -- tags --------------------------------------------------------------------------------------------

    async def _patch_tags(self, request: Request, keyspace: str, key: str, section: str) -> Response:
        self.writes["patch_tags"] += 1
        self._keyspace(keyspace, write=True)
        self._section(section)
        patch = self._merge_patch(request)
        unknown = [t for t in patch if t not in self.tag_definitions]
        if unknown:
            raise _Problem(400, "Validation failed", f"Unknown tag(s): {', '.join(sorted(unknown))}")
        bad = [t for t, v in patch.items() if v is not None and not isinstance(v, bool)]
        if bad:
            raise _Problem(400, "Validation failed", "Tag values must be true, false or null")
        data = self._existing(keyspace, key, section)
        for tag, value in patch.items():
            if value is True:
                data.tags.add(tag)
            else:
                data.tags.discard(tag)
        return Response.empty(204)

    async def _get_tags(self, request: Request, keyspace: str, key: str, section: str) -> Response:
        self._keyspace(keyspace)
        self._section(section)
        data = self._existing(keyspace, key, section)
        return Response.json({tag: True for tag in sorted(data.tags)})

    # -- consent reports (E1) ----------------------------------------------------------------------------

    async def _create_report(self, request: Request) -> Response:
        self.report_requests += 1
        body = self._json_object(request)
        section = body.get("section_discriminator")
        if not isinstance(section, str):
            raise _Problem(400, "Validation failed", "section_discriminator is required")
        self._section(section)
        topics = body.get("topic_discriminators")
        if not isinstance(topics, list) or not topics or not all(isinstance(t, str) for t in topics):
            raise _Problem(400, "Validation failed", "topic_discriminators must be a non-empty list")
        unknown = sorted(t for t in topics if t not in self.topics)
        if unknown:
            raise _Problem(400, "Validation failed", f"Unknown topic(s): {', '.join(unknown)}")
        channels: list[Any] = []
        if "channel_discriminator" in body:
            channels.append(body["channel_discriminator"])
        for entry in body.get("channels") or []:
            if not isinstance(entry, dict) or not entry.get("field_name"):
                raise _Problem(400, "Validation failed", "channels items need field_name and channel_discriminator")
            channels.append(entry.get("channel_discriminator"))
        if not channels or any(c not in CHANNELS for c in channels):
            raise _Problem(400, "Validation failed", "A known channel_discriminator is required")
        keyspace = body.get("keyspace_discriminator")
        if keyspace is not None:
            self._keyspace(str(keyspace))
        wanted_topics, wanted_channels = set(topics), set(channels)
        rows = []
        for (ks, key), sections in sorted(self._profiles.items()):
            data = sections.get(section)
            if data is None or (keyspace is not None and ks != keyspace):
                continue
            for (topic, channel), consent in sorted(data.consents.items()):
                if topic in wanted_topics and channel in wanted_channels:
                    rows.append((ks, key, topic, channel, str(consent["type"]), str(consent["modified_at"])))
        report_id = f"rep-{next(self._report_seq):06d}"
        now = self.clock.timestamp()
        self._reports[report_id] = _Report(report_id, now, rows)
        url = f"{self.public_url}{REPORT_PATH}/{report_id}"
        expires_at = (self.clock.now() + timedelta(seconds=self.report_lifetime)).isoformat()
        return Response.json({"report_id": report_id, "poll_url": url,
                              "expires_at": expires_at.replace("+00:00", "Z")},
                             status=202, headers=[("location", url)])

    async def _get_report(self, request: Request, report_id: str) -> Response:
        report = self._reports.get(report_id)
        if report is None:
            raise _Problem(404, "Not found", "Report does not exist")
        if self.clock.timestamp() - report.created >= self.report_lifetime:
            raise _Problem(410, "Gone", "The report has expired")
        report.polls += 1
        if report.polls <= self.report_polls_until_ready:
            raise _Problem(404, "Not found", "Report is not ready yet")
        gzip = "gzip" in (request.header("accept-encoding") or "").lower()
        headers = [("content-type", "text/csv; charset=utf-8")]
        if gzip:
            headers.append(("content-encoding", "gzip"))
        return StreamedResponse(200, b"", headers, chunks=self._report_chunks(report, gzip=gzip))

    def _report_chunks(self, report: _Report, *, gzip: bool) -> Iterator[bytes]:
        """The CSV, ``report_chunk_rows`` rows at a time; each gzip chunk is sync-flushed so it can be
        decoded on arrival."""
        compressor = zlib.compressobj(wbits=31) if gzip else None

        def encode(text: str) -> bytes:
            data = text.encode("utf-8")
            if compressor is None:
                return data
            return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)

        cols = self.report_columns
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\r\n")
        writer.writerow([cols.profile_key, cols.keyspace, cols.topic, cols.channel, cols.type, cols.modified_at])
        yield encode(buf.getvalue())
        step = max(1, self.report_chunk_rows)
        for start in range(0, len(report.rows), step):
            buf.seek(0)
            buf.truncate()
            writer.writerows((key, ks, topic, channel, kind, modified)
                             for ks, key, topic, channel, kind, modified in report.rows[start:start + step])
            yield encode(buf.getvalue())
        if compressor is not None:
            yield compressor.flush()


__all__ = ["DEFAULT_ATTRIBUTES", "DEFAULT_TAGS", "DEFAULT_TOPICS", "ApsisSimulator", "StreamedResponse"]
