"""HTTP client for the EveryAction / NGP VAN API v4: people matching and updates, and change detection.

Built on :class:`crmsync.connectors.http.ApiClient`, which owns retries. This module adds what is
VAN-specific:

* Basic auth with the application name as user and ``"{api_key}|{db_mode}"`` as password (research A1), sent
  only to the API host: export files are pre-signed cloud-storage URLs that must be fetched *without* VAN
  credentials (A5.3), and sending them there would leak the key to a third party;
* mapping VAN's ``{"errors": [{code, text, ...}]}`` envelope to the shared error split, keeping the API's own
  message and code (never request headers);
* JSON bodies are parsed inside :meth:`EveryActionClient.check_response`, so a truncated body is retried by
  the base loop like any other transient failure;
* the find/findOrCreate minimum match combinations are enforced locally (A3.2, C1);
* changed-entity export jobs are polled on ``trio.sleep`` and *every* file is downloaded (C8).
"""

from __future__ import annotations

import base64
import re
import weakref
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

import httpx
import structlog
import trio

from crmsync.connectors.errors import (
    AuthError,
    FatalApiError,
    MalformedResponseError,
    NotFoundError,
    RateLimitedError,
    RetriableApiError,
)
from crmsync.connectors.everyaction.errors import (
    ExportColumnMissingError,
    ExportFileExpiredError,
    ExportJobFailedError,
    ExportJobTimeoutError,
    UnmatchableCandidateError,
)
from crmsync.connectors.everyaction.exports import (
    ExportFile,
    ExportJob,
    export_job_body,
    parse_export_job,
)
from crmsync.connectors.everyaction.records import (
    DEFAULT_CONTACT_FIELDS,
    ContactChange,
    MatchCandidate,
    MatchResult,
    OptInStatus,
    VanPerson,
    export_header,
    identifier_update,
    mask_phone,
    normalize_us_phone,
    parse_contacts_csv,
    parse_match_response,
    parse_person,
    phone_opt_in_update,
)
from crmsync.connectors.http import ApiClient, parse_json_answer, parse_retry_after

log = structlog.get_logger("crmsync.connectors.everyaction.client")

DEFAULT_BASE_URL = "https://api.securevan.com/v4"
INTERNATIONAL_BASE_URL = "https://intlapi.securevan.com/v4"

#: What :meth:`EveryActionClient.get_person` expands by default. ``externalIds`` is the ``$expand`` name for
#: the ``identifiers`` collection. Permissioned expansions (``scores``, ``recordedAddresses``) are left out on
#: purpose: requesting them without access breaks the whole GET (research A3.4, C5).
DEFAULT_EXPAND: tuple[str, ...] = ("phones", "emails", "addresses", "externalIds")

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_PERSON_IN_LOCATION = re.compile(r"/people/(\d+)(?:[/?#]|$)")
_ALT_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_]*:[A-Za-z0-9_.\-]+$")


def van_error_message(body: Any) -> tuple[str | None, str | None]:
    """``(message, code)`` from VAN's error envelope, or ``(None, None)`` if the body is not one.

    Every error is kept (VAN may report several validation failures at once) with its ``properties`` and
    ``referenceCode``, which support staff ask for.
    """
    if not isinstance(body, Mapping) or not isinstance(body.get("errors"), list) or not body["errors"]:
        return None, None
    parts: list[str] = []
    code: str | None = None
    for err in body["errors"]:
        if not isinstance(err, Mapping):
            continue
        err_code = err.get("code")
        code = code or (str(err_code) if err_code else None)
        text = str(err.get("text") or "").strip()
        part = f"{err_code}: {text}" if err_code and text else str(err_code or text or "error")
        extras = []
        props = err.get("properties")
        if isinstance(props, list) and props:
            extras.append("properties: " + ", ".join(str(p) for p in props))
        if err.get("referenceCode"):
            extras.append(f"referenceCode: {err['referenceCode']}")
        parts.append(part + (f" ({'; '.join(extras)})" if extras else ""))
    return ("; ".join(parts) or None), code


class EveryActionClient(ApiClient):
    """One API key's view of one EveryAction/VAN database.

    Settings whose real-world values the research could not verify are constructor arguments with defaults:
    ``poll_interval`` (Parsons polls every 10 s), ``job_timeout`` (scripts give up around 1000 s; polling can
    stall), ``contact_fields`` (only some Contacts field names are confirmed), ``exclude_changes_from_self``
    (seen in docs and user code, meaning inferred: skip changes this key made, which suppresses echoes of our
    own writes) and ``file_size_kb_limit`` (``None`` keeps VAN's default of 40000 KB).
    """

    system: ClassVar[str] = "everyaction"

    def __init__(
        self,
        application_name: str,
        api_key: str,
        *,
        db_mode: int = 1,
        base_url: str = DEFAULT_BASE_URL,
        poll_interval: float = 10.0,
        job_timeout: float = 1200.0,
        contact_fields: Sequence[str] = DEFAULT_CONTACT_FIELDS,
        contact_columns: Mapping[str, str] | None = None,
        exclude_changes_from_self: bool | None = True,
        file_size_kb_limit: int | None = None,
        **kwargs: Any,
    ):
        if not application_name or ":" in application_name:
            raise ValueError("application_name must be non-empty and contain no ':'")
        if not api_key or not api_key.strip():
            raise ValueError("api_key must be non-empty")
        if db_mode not in (0, 1):
            raise ValueError("db_mode must be 0 (My Voters) or 1 (My Campaign / EveryAction)")
        super().__init__(base_url, **kwargs)
        self.application_name = application_name
        self.db_mode = db_mode
        self.poll_interval = poll_interval
        self.job_timeout = job_timeout
        #: column name per ContactChange attribute (``contact_columns``), else the plain list of columns
        self.contact_columns = dict(contact_columns) if contact_columns else None
        self.contact_fields = (tuple(dict.fromkeys(self.contact_columns.values())) if self.contact_columns
                               else tuple(contact_fields))
        self.exclude_changes_from_self = exclude_changes_from_self
        self.file_size_kb_limit = file_size_kb_limit
        token = base64.b64encode(f"{application_name}:{api_key.strip()}|{db_mode}".encode()).decode("ascii")
        self.__authorization = f"Basic {token}"  # name-mangled: not in vars() dumps by accident

    def __repr__(self) -> str:
        return (f"EveryActionClient(base_url={self.base_url!r}, application_name={self.application_name!r}, "
                f"db_mode={self.db_mode})")

    # -- ApiClient override points -----------------------------------------------------------------------

    def _is_api_url(self, url: httpx.URL | str) -> bool:
        text = str(url)
        return text == self.base_url or text.startswith(self.base_url + "/")

    async def prepare_request(self, request: httpx.Request) -> None:
        """Credentials go to the API host only, never to export-file storage."""
        if self._is_api_url(request.url):
            request.headers["Authorization"] = self.__authorization
            request.headers.setdefault("Accept", "application/json")

    def check_response(self, response: httpx.Response) -> None:
        if not self._is_api_url(response.request.url):
            self._check_download(response)
            return
        status = response.status_code
        if 200 <= status < 300:
            if response.content.strip():
                _decode_json(response)  # raises MalformedResponseError (retriable) on garbage
            return
        if status in _REDIRECTS and response.headers.get("location"):
            return  # a matched find may redirect to the person (research A3.5); the caller reads Location
        try:
            body = parse_json_answer(response.content) if response.content.strip() else None
        except ValueError:
            body = None
        message, code = van_error_message(body)
        if message is None:
            message = f"HTTP {status}" + (f": {_short_text(response)}" if response.content.strip() else "")
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if status == 429:
            raise RateLimitedError(self.system, message, status=status, code=code, retry_after=retry_after)
        if status >= 500 or status == 408:
            raise RetriableApiError(self.system, message, status=status, code=code, retry_after=retry_after)
        if status in (401, 403):
            raise AuthError(self.system, message, status=status, code=code)
        if status == 404:
            raise NotFoundError(self.system, message, status=status, code=code)
        # Including 400 INTERNAL_SERVER_ERROR, which VAN returns for some bad vanIds (research C12): it is
        # deterministic, so retrying would only burn quota.
        raise FatalApiError(self.system, message, status=status, code=code)

    def _check_download(self, response: httpx.Response) -> None:
        """Storage errors are not VAN's envelope, and their bodies may echo the signed URL: status only."""
        status = response.status_code
        if status < 300:
            return
        message = f"export file download failed: HTTP {status}"
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if status == 429:
            raise RateLimitedError(self.system, message, status=status, retry_after=retry_after)
        if status >= 500 or status == 408:
            raise RetriableApiError(self.system, message, status=status, retry_after=retry_after)
        if status == 403:
            raise ExportFileExpiredError(self.system, message + " (link expired or refused)", status=status)
        if status == 404:
            raise NotFoundError(self.system, message, status=status)
        raise FatalApiError(self.system, message, status=status)

    # -- people ------------------------------------------------------------------------------------------

    async def get_person(self, van_id: int | str, *, expand: Iterable[str] | None = DEFAULT_EXPAND
                         ) -> VanPerson:
        """``GET people/{vanId}``; collections not in ``expand`` come back ``None`` (VAN sends ``null``)."""
        fields = [e for e in (expand or ()) if e]
        params = {"$expand": ",".join(fields)} if fields else None
        response = await self.request("GET", f"people/{_person_ref(van_id)}", params=params)
        try:
            return parse_person(_decode_json(response))
        except ValueError as exc:
            raise MalformedResponseError(self.system, f"unexpected person body: {exc}",
                                         status=response.status_code) from exc

    async def search_people(self, *, expand: Iterable[str] | None = DEFAULT_EXPAND, page_size: int = 50,
                            **filters: str) -> AsyncIterator[VanPerson]:
        """``GET people`` with VAN's filters (``firstName``, ``lastName``, ``email``, ``phoneNumber``, ...:
        case-insensitive prefix matches), following ``nextPageLink`` until it is null.

        Also stops on an empty page: some VAN list endpoints keep returning a link after the data runs out
        (research C11).
        """
        query: dict[str, str] | None = {k: v for k, v in filters.items() if v}
        if not query:
            raise ValueError("GET people needs at least one search parameter")
        if not 1 <= page_size <= 200:
            raise ValueError("page_size must be within 1..200")
        query["$top"] = str(page_size)
        fields = [e for e in (expand or ()) if e]
        if fields:
            query["$expand"] = ",".join(fields)
        path = "people"
        while True:
            body = _decode_json(await self.request("GET", path, params=query))
            items = body.get("items") if isinstance(body, Mapping) else None
            if not isinstance(items, list):
                raise MalformedResponseError(self.system, "people search answer has no items")
            for item in items:
                yield parse_person(item)
            link = body.get("nextPageLink")
            if not link or not items:
                return
            if not self._is_api_url(str(link)):
                raise MalformedResponseError(self.system, "nextPageLink points outside the API")
            path, query = str(link), None  # the link already carries every query parameter

    async def find_person(self, candidate: MatchCandidate) -> int | None:
        """``POST people/find``: the matched vanId, or ``None`` when VAN finds nobody (404).

        Refuses (:class:`UnmatchableCandidateError`) a candidate that lacks a minimum combination: VAN would
        never match it.
        """
        _require_matchable(candidate)
        try:
            response = await self.request("POST", "people/find", json=candidate.to_json())
        except NotFoundError:
            return None
        van_id, _status = self._match_from(response)
        return van_id

    async def find_or_create(self, candidate: MatchCandidate) -> MatchResult:
        """``POST people/findOrCreate`` (the upsert). 201 means created, 200 matched-and-updated.

        Refused locally without a minimum combination: VAN would create a duplicate on every call (A8).
        """
        _require_matchable(candidate)
        response = await self.request("POST", "people/findOrCreate", json=candidate.to_json())
        van_id, status = self._match_from(response)
        created = response.status_code == 201 or (status or "").lower() == "unmatchedstored"
        log.debug("everyaction_find_or_create", van_id=van_id, created=created, match_status=status)
        return MatchResult(van_id=van_id, status=status, created=created)

    async def update_person(self, van_id: int | str, body: Mapping[str, Any]) -> MatchResult:
        """``POST people/{vanId}``: an alias of findOrCreate with the vanId fixed; 404 if it does not exist.

        Collections add or update by value. The response is not a faithful echo (research C3): GET the person
        to see the result.
        """
        response = await self.request("POST", f"people/{_person_ref(van_id)}", json=dict(body))
        matched_id, status = self._match_from(response)
        return MatchResult(van_id=matched_id, status=status, created=False)

    async def set_phone_opt_in(self, van_id: int | str, phone: str, status: OptInStatus, *,
                               phone_type: str | None = None) -> MatchResult:
        """Set one phone's SMS opt-in status (added to the person if missing). ``phone`` may be any US format.

        VAN stores opt-in per phone number, so this also changes what other people sharing the number show.
        """
        e164 = normalize_us_phone(phone)
        if e164 is None:
            raise ValueError(f"not a valid US phone number: {mask_phone(phone)}")
        result = await self.update_person(van_id, phone_opt_in_update(e164, status, phone_type=phone_type))
        log.debug("everyaction_opt_in_set", van_id=result.van_id, phone=mask_phone(e164), status=status.value)
        return result

    async def add_identifier(self, van_id: int | str, external_id: str, *, id_type: str) -> MatchResult:
        """Attach an external identifier (e.g. the Mobile Commons profile id). The type name must exist in
        the VAN instance; which name a given instance uses is configuration, not something the API reports."""
        return await self.update_person(van_id, identifier_update(id_type, external_id))

    def _match_from(self, response: httpx.Response) -> tuple[int, str | None]:
        if response.status_code in _REDIRECTS:
            m = _PERSON_IN_LOCATION.search(response.headers.get("location", ""))
            if not m:
                raise MalformedResponseError(self.system, "redirect without a person location",
                                             status=response.status_code)
            return int(m.group(1)), None
        try:
            return parse_match_response(_decode_json(response))
        except ValueError as exc:
            raise MalformedResponseError(self.system, f"unexpected match response: {exc}",
                                         status=response.status_code) from exc

    # -- changed-entity exports --------------------------------------------------------------------------

    async def create_contacts_export_job(
        self, since: datetime, until: datetime | None = None, *, fields: Sequence[str] | None = None
    ) -> ExportJob:
        """``POST changedEntityExportJobs`` for Contacts changed in ``[since, until)``.

        ``since`` must be within VAN's 90-day lookback (the server answers 400 otherwise). ``until=None`` lets
        the server pick "now"; read the effective end from the returned job's ``date_changed_to``.
        """
        requested = tuple(fields or self.contact_fields)
        body = export_job_body(
            since=since, until=until, resource_type="Contacts", requested_fields=requested,
            file_size_kb_limit=self.file_size_kb_limit,
            exclude_changes_from_self=self.exclude_changes_from_self,
        )
        # The answer does not echo requestedFields (issue 7, item 11): the first file's header is checked
        # against what was requested instead (iter_export_rows).
        job = self._job_from(await self.request("POST", "changedEntityExportJobs", json=body))
        log.info("everyaction_export_created", export_job_id=job.export_job_id, status=job.job_status)
        return job

    async def get_export_job(self, export_job_id: int) -> ExportJob:
        return self._job_from(await self.request("GET", f"changedEntityExportJobs/{int(export_job_id)}"))

    async def wait_for_export_job(self, job: ExportJob | int, *, poll_interval: float | None = None,
                                  give_up_after: float | None = None) -> ExportJob:
        """Poll until ``Complete``. Raises :class:`ExportJobFailedError` on Error/Failed/Cancelled and
        :class:`ExportJobTimeoutError` after ``give_up_after`` seconds of trio time (default
        ``job_timeout``). Not ``trio.fail_after``: a stalled job is a typed, retriable API condition, and the
        poll in flight should not be cancelled halfway."""
        interval = self.poll_interval if poll_interval is None else poll_interval
        deadline = trio.current_time() + (self.job_timeout if give_up_after is None else give_up_after)
        current = job if isinstance(job, ExportJob) else await self.get_export_job(job)
        polls = 0
        while True:
            if current.is_complete:
                log.info("everyaction_export_complete", export_job_id=current.export_job_id,
                         files=len(current.files), records=current.exported_record_count, polls=polls)
                return current
            if current.is_failed:
                raise ExportJobFailedError(
                    self.system, f"export job {current.export_job_id} {current.job_status}: "
                    f"{current.message or 'no message'}", code=current.code)
            if trio.current_time() + interval > deadline:
                raise ExportJobTimeoutError(
                    self.system, f"export job {current.export_job_id} still {current.job_status} "
                    f"after {polls} polls")
            await trio.sleep(interval)
            polls += 1
            current = await self.get_export_job(current.export_job_id)

    async def download_export_file(self, file: ExportFile) -> str:
        """Fetch one export file (pre-signed URL, no VAN auth) and return its text."""
        response = await self.request("GET", file.download_url)
        return response.content.decode("utf-8-sig", errors="replace")

    async def iter_export_rows(self, job: ExportJob) -> AsyncIterator[ContactChange]:
        """Rows of every file of a completed job, file by file.

        Logs a warning when the rows read differ from ``exportedRecordCount``: that is how a lost file or a
        mis-sniffed delimiter would show up.
        """
        total = 0
        for index, file in enumerate(job.files):
            text = await self.download_export_file(file)
            if index == 0 and text.strip():
                self.check_export_header(text)
            rows = parse_contacts_csv(text, self.contact_columns)
            total += len(rows)
            log.debug("everyaction_export_file", export_job_id=job.export_job_id, file_index=index,
                      files=len(job.files), rows=len(rows))
            for row in rows:
                yield row
        if total != job.exported_record_count:
            log.warning("everyaction_export_count_mismatch", export_job_id=job.export_job_id, rows=total,
                        exported_record_count=job.exported_record_count)

    def check_export_header(self, text: str) -> None:
        """Every requested column must be in the file's header (compared case-insensitively), or
        :class:`ExportColumnMissingError` names the missing ones."""
        header = export_header(text)
        present = {c.lower() for c in header}
        missing = tuple(c for c in self.contact_fields if c.lower() not in present)
        if missing:
            raise ExportColumnMissingError(missing, tuple(header))

    async def run_contacts_export(self, since: datetime, until: datetime | None = None) -> ExportJob:
        """Create a Contacts export and wait for it; the job tells the caller the window VAN actually used."""
        return await self.wait_for_export_job(await self.create_contacts_export_job(since, until))

    async def changed_contacts(self, since: datetime, until: datetime | None = None
                               ) -> AsyncIterator[ContactChange]:
        """Every contact changed in ``[since, until)``, as its current version (rows may repeat across
        windows; upsert by ``van_id``). Use :meth:`run_contacts_export` + :meth:`iter_export_rows` to also
        learn the server's effective window end."""
        job = await self.run_contacts_export(since, until)
        async for row in self.iter_export_rows(job):
            yield row

    def _job_from(self, response: httpx.Response) -> ExportJob:
        try:
            return parse_export_job(_decode_json(response))
        except (ValueError, TypeError) as exc:
            raise MalformedResponseError(self.system, f"unexpected export job body: {exc}",
                                         status=response.status_code) from exc


def _require_matchable(candidate: MatchCandidate) -> None:
    if not candidate.can_match:
        raise UnmatchableCandidateError()


def _person_ref(van_id: int | str) -> str:
    """A vanId, or the ``{personIdType}:{personId}`` alternate form; anything else is refused rather than
    pasted into a URL path."""
    if isinstance(van_id, int) and not isinstance(van_id, bool):
        if van_id <= 0:
            raise ValueError("vanId must be positive")
        return str(van_id)
    text = str(van_id).strip()
    if text.isdigit():
        return text
    if _ALT_ID.match(text):
        return text
    raise ValueError("person reference must be a vanId or 'IdType:id'")


#: each answer's decoded body: ``check_response`` decodes it, the endpoint reads it, and neither decodes it twice
_decoded: weakref.WeakKeyDictionary[httpx.Response, Any] = weakref.WeakKeyDictionary()


def _decode_json(response: httpx.Response) -> Any:
    if response in _decoded:
        return _decoded[response]
    try:
        body = parse_json_answer(response.content)
    except ValueError as exc:
        raise MalformedResponseError(
            "everyaction", f"malformed JSON in HTTP {response.status_code} response",
            status=response.status_code,
        ) from exc
    _decoded[response] = body
    return body


def _short_text(response: httpx.Response, limit: int = 200) -> str:
    text = " ".join(response.content.decode("utf-8", errors="replace").split())
    return text[:limit]
