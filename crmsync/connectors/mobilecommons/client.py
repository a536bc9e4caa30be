"""The Mobile Commons (Upland Mobile Messaging) REST client.

Why it looks the way it does (research sheet PART B/C):

* Auth is HTTP Basic (login email + password) for legacy accounts, or ``Authorization: Bearer`` for accounts
  migrated to Upland Credential Manager (B1, C6); both are supported. Multi-company logins add
  ``company=<Company Key>``.
* Logical errors come back as HTTP 200 with ``<response success="false"><error id=… message=…/>`` (B2), so
  :meth:`MobileCommonsClient.check_response` parses every body (with ``defusedxml``: the body is untrusted)
  inside the base retry loop. Error 5 means "not found", 27 is the rate limit and is retried.
* Non-200 answers are HTML pages; 503 "heavy load" / "Site Maintenance" and 502/504 are retried (B7, C7).
* ``profiles`` pages until a page says ``num="0"``; never "until num < limit" (C2, C3).
* The documented limit is 160 concurrent calls per company (B7); we stay far below with 10 by default.
"""

from __future__ import annotations

import base64
import re
import weakref
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import date, datetime
from typing import Any, ClassVar, Literal
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree as SafeET
import httpx
import structlog

from crmsync.connectors.errors import (
    AuthError,
    FatalApiError,
    MalformedResponseError,
    NotFoundError,
    RateLimitedError,
    RetriableApiError,
)
from crmsync.connectors.http import ApiClient, parse_retry_after
from crmsync.connectors.mobilecommons.records import (
    DEFAULT_CONSTITUENT_ID_FIELD,
    Campaign,
    Profile,
    ProfileUpdate,
    build_opt_out_params,
    build_profile_update_params,
    build_profiles_params,
    parse_campaign,
    parse_profile,
    require_mc_phone,
)

log = structlog.get_logger("crmsync.connectors.mobilecommons.client")

DEFAULT_BASE_URL = "https://secure.mcommons.com/api"

#: Error ids with their own exception type (B7). Everything else is fatal with the API's message.
ERROR_NOT_FOUND = "5"
ERROR_RATE_LIMITED = "27"

PostEncoding = Literal["form", "query", "json"]


#: each answer's parsed body: ``check_response`` parses it, the endpoint reads it, and neither parses it twice
_parsed: weakref.WeakKeyDictionary[httpx.Response, Element] = weakref.WeakKeyDictionary()


def response_xml(system: str, response: httpx.Response) -> Element:
    """:func:`parse_xml`, once per response."""
    root = _parsed.get(response)
    if root is None:
        root = _parsed[response] = parse_xml(system, response)
    return root


def parse_xml(system: str, response: httpx.Response) -> Element:
    """Parse a body as XML with defusedxml; garbage is a retriable :class:`MalformedResponseError`.

    Entity/DTD tricks are refused as fatal: no proxy produces them by accident.
    """
    try:
        root = SafeET.fromstring(response.content)
    except ParseError as exc:
        raise MalformedResponseError(
            system, f"malformed XML in HTTP {response.status_code} response", status=response.status_code
        ) from exc
    except defusedxml.DefusedXmlException as exc:
        raise FatalApiError(
            system, f"refused unsafe XML ({type(exc).__name__})", status=response.status_code
        ) from exc
    if not isinstance(root, Element):  # defusedxml's stubs are loose; make the type explicit
        raise MalformedResponseError(system, "XML body without a root element", status=response.status_code)
    return root


def html_error_text(body: str, limit: int = 200) -> str:
    """The gist of an HTML error page: ``<title>``, ``<h1>``, ``<h4>`` and first ``<p>`` (Parsons does so)."""
    parts: list[str] = []
    for tag in ("title", "h1", "h4", "p"):
        match = re.search(rf"<{tag}[^>]*>(.*?)</{tag}>", body, re.IGNORECASE | re.DOTALL)
        if match:
            text = " ".join(re.sub(r"<[^>]+>", " ", match.group(1)).split())
            if text and text not in parts:
                parts.append(text)
    if not parts:
        parts.append(" ".join(re.sub(r"<[^>]+>", " ", body).split()))
    return " - ".join(parts)[:limit]


class MobileCommonsClient(ApiClient):
    """Typed access to the Mobile Commons endpoints the sync needs.

    Give either ``login`` + ``password`` (HTTP Basic) or ``api_token`` (Bearer). ``company_key`` selects a
    company for multi-company logins. Settings for facts the research could not verify:

    * ``constituent_id_field``: the custom column holding the EveryAction Constituent ID [INF];
    * ``range_format``: the ``strftime`` format of ``profiles``' ``from``/``to`` [INF: docs say ISO-8601,
      clients send ``YYYY-MM-DD`` or ``YYYY-MM-DD HH:MM:SS UTC``];
    * ``post_encoding``: how POST parameters travel (form by default, like the PHP/Ruby/Node clients; the
      API is reported to read query strings and JSON bodies too);
    * ``rate_limit_retry_after``: seconds to wait after error 27, which carries no Retry-After; ``None``
      uses the jittered backoff.
    """

    system: ClassVar[str] = "mobilecommons"

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        login: str | None = None,
        password: str | None = None,
        api_token: str | None = None,
        company_key: str | None = None,
        constituent_id_field: str = DEFAULT_CONSTITUENT_ID_FIELD,
        range_format: str = "%Y-%m-%d %H:%M:%S UTC",
        post_encoding: PostEncoding = "form",
        rate_limit_retry_after: float | None = None,
        max_concurrency: int = 10,
        **kwargs: Any,
    ):
        if api_token and (login or password):
            raise ValueError("give either login/password (Basic) or api_token (Bearer), not both")
        if not api_token and not (login and password):
            raise ValueError("Mobile Commons needs login and password, or an api_token")
        super().__init__(base_url, max_concurrency=max_concurrency, **kwargs)
        # The Authorization value is computed once and kept private; it never reaches logs or errors.
        if api_token:
            self._authorization = f"Bearer {api_token}"
        else:
            basic = base64.b64encode(f"{login}:{password}".encode()).decode("ascii")
            self._authorization = f"Basic {basic}"
        self._auth_mode = "bearer" if api_token else "basic"
        self.company_key = company_key
        self.constituent_id_field = constituent_id_field
        self.range_format = range_format
        self.post_encoding: PostEncoding = post_encoding
        self.rate_limit_retry_after = rate_limit_retry_after

    def __repr__(self) -> str:  # never show credentials
        return f"MobileCommonsClient(base_url={self.base_url!r}, auth={self._auth_mode})"

    # -- ApiClient override points -------------------------------------------------------------------------

    async def prepare_request(self, request: httpx.Request) -> None:
        """Authenticate and ask for XML (B1)."""
        request.headers["Accept"] = "application/xml"
        request.headers["Authorization"] = self._authorization

    def check_response(self, response: httpx.Response) -> None:
        """Map HTML status pages and ``success="false"`` bodies to typed errors (B2, B7).

        Runs inside the base retry loop, so a body that does not parse (retriable) or an error 27 in a 200
        is retried like a 503.
        """
        status = response.status_code
        if status >= 300:
            self._raise_for_html(response)
        root = response_xml(self.system, response)
        if root.tag != "response":
            raise MalformedResponseError(self.system, f"unexpected XML root <{root.tag}>", status=status)
        success = (root.get("success") or "").strip().lower()
        if success == "true":
            return
        if success != "false":
            raise MalformedResponseError(self.system, "response without a success attribute", status=status)
        error = root.find("error")
        code = (error.get("id") or "").strip() if error is not None else ""
        message = (error.get("message") or "").strip() if error is not None else ""
        text = f"error {code or '?'}: {message or 'unknown error'}"
        if code == ERROR_NOT_FOUND:
            raise NotFoundError(self.system, text, status=status, code=code)
        if code == ERROR_RATE_LIMITED:
            raise RateLimitedError(
                self.system, text, status=status, code=code, retry_after=self.rate_limit_retry_after
            )
        raise FatalApiError(self.system, text, status=status, code=code or None)

    def _raise_for_html(self, response: httpx.Response) -> None:
        status = response.status_code
        body = response.text
        gist = html_error_text(body)
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        lowered = body.lower()
        if status in (401, 403):
            # The page text is the API's, never ours: safe to keep, and no header or URL goes into it.
            raise AuthError(self.system, f"credentials refused (HTTP {status})", status=status)
        if status == 429:
            raise RateLimitedError(self.system, f"HTTP 429: {gist}", status=status, retry_after=retry_after)
        if status == 503 and ("heavy load" in lowered or "maintenance" in lowered):
            raise RetriableApiError(
                self.system, f"server busy (HTTP 503): {gist}", status=status, retry_after=retry_after
            )
        if status >= 500 or status == 408:
            raise RetriableApiError(
                self.system, f"HTTP {status}: {gist}", status=status, retry_after=retry_after
            )
        if status == 404:
            raise NotFoundError(self.system, f"HTTP 404: {gist}", status=status)
        raise FatalApiError(self.system, f"HTTP {status}: {gist}", status=status)

    # -- plumbing --------------------------------------------------------------------------------------------

    def _with_company(self, params: Mapping[str, str]) -> dict[str, str]:
        merged = dict(params)
        if self.company_key:
            merged["company"] = self.company_key
        return merged

    async def _get(self, endpoint: str, params: Mapping[str, str]) -> Element:
        response = await self.request("GET", endpoint, params=self._with_company(params))
        return response_xml(self.system, response)

    async def _post(self, endpoint: str, params: Mapping[str, str]) -> Element:
        params = self._with_company(params)
        if self.post_encoding == "query":
            response = await self.request("POST", endpoint, params=params)
        elif self.post_encoding == "json":
            response = await self.request("POST", endpoint, json=params)
        else:
            response = await self.request("POST", endpoint, data=params)
        return response_xml(self.system, response)

    def _profile_from(self, root: Element) -> Profile:
        el = root.find("profile")
        if el is None:
            raise MalformedResponseError(self.system, "response without a <profile>")
        try:
            return parse_profile(el, constituent_id_field=self.constituent_id_field)
        except ValueError as exc:
            raise MalformedResponseError(self.system, f"unreadable profile: {exc}") from exc

    # -- endpoints -------------------------------------------------------------------------------------------

    async def profiles(
        self,
        *,
        updated_from: datetime | date | None = None,
        updated_to: datetime | date | None = None,
        phone_numbers: Iterable[str] | None = None,
        limit: int = 1000,
        include_custom_columns: bool = True,
        include_subscriptions: bool = True,
        max_pages: int | None = None,
    ) -> AsyncIterator[Profile]:
        """Every profile whose ``updated_at`` lies in ``[updated_from, updated_to]``, page by page.

        Stops only at a page with ``num="0"`` (C2/C3), except for ``phone_numbers`` that fit in one page:
        Mobile Commons keeps one profile per phone (``profile`` and ``profile_update`` address it by phone), so
        their profiles are all in the first page and a second one would be empty. Guards against the reported
        "page is ignored" behaviour (C1): a page repeating the previous page's ids raises
        :class:`FatalApiError` rather than looping forever; ``max_pages`` is an extra safety stop.
        """
        phones = list(phone_numbers) if phone_numbers is not None else None
        one_page = phones is not None and len(phones) <= limit
        page = 1
        previous_ids: list[str] | None = None
        while True:
            params = build_profiles_params(
                updated_from=updated_from, updated_to=updated_to, phone_numbers=phones, limit=limit,
                page=page, include_custom_columns=include_custom_columns,
                include_subscriptions=include_subscriptions, range_format=self.range_format,
            )
            root = await self._get("profiles", params)
            container = root.find("profiles")
            if container is None:
                raise MalformedResponseError(self.system, "profiles response without <profiles>")
            try:
                num = int((container.get("num") or "").strip())
            except ValueError as exc:
                raise MalformedResponseError(self.system, "profiles page without a numeric num") from exc
            if num == 0:
                log.debug("profiles_done", pages=page - 1)
                return
            elements = container.findall("profile")
            if not elements:
                raise MalformedResponseError(self.system, f"profiles page {page} says num={num} but is empty")
            ids = [el.get("id") or "" for el in elements]
            if ids == previous_ids:
                raise FatalApiError(
                    self.system, f"profiles page {page} repeats page {page - 1}; paging is ignored"
                )
            previous_ids = ids
            for el in elements:
                try:
                    profile = parse_profile(el, constituent_id_field=self.constituent_id_field)
                except ValueError as exc:
                    raise MalformedResponseError(self.system, f"unreadable profile: {exc}") from exc
                yield profile
            if one_page:
                return
            if max_pages is not None and page >= max_pages:
                log.warning("profiles_max_pages", max_pages=max_pages)
                return
            page += 1

    async def profile(self, phone_number: str) -> Profile:
        """One profile by phone (any format). Raises :class:`NotFoundError` (error 5) when there is none."""
        params = {"phone_number": require_mc_phone(phone_number)}
        root = await self._get("profile", params)
        return self._profile_from(root)

    async def find_profile(self, phone_number: str) -> Profile | None:
        """Like :meth:`profile` but ``None`` when not found (error 5 is also "invalid phone", C5)."""
        try:
            return await self.profile(phone_number)
        except NotFoundError:
            return None

    async def profile_update(self, update: ProfileUpdate) -> Profile:
        """Upsert a profile by phone and return it as saved.

        With ``opt_in_path_id`` the phone is subscribed to the path's campaign and the path's welcome text
        is sent, only the first time ever for that campaign (B5). That makes the call safe to retry after
        a timeout: a repeat sends no second welcome and cannot re-subscribe someone who opted out.
        """
        params = build_profile_update_params(update, constituent_id_field=self.constituent_id_field)
        log.debug("profile_update", opt_in_path_id=update.opt_in_path_id, fields=sorted(params))
        root = await self._post("profile_update", params)
        return self._profile_from(root)

    async def profile_opt_out(
        self, phone_number: str, *, campaign_id: str | None = None, subscription_id: str | None = None
    ) -> None:
        """Opt a phone out of all campaigns, or only ``campaign_id`` / ``subscription_id`` (B5).

        Only ``success`` is read from the answer: whether it also carries the profile is unverified (B3).
        """
        params = build_opt_out_params(phone_number, campaign_id=campaign_id, subscription_id=subscription_id)
        log.debug("profile_opt_out", campaign_id=campaign_id, subscription_id=subscription_id)
        await self._post("profile_opt_out", params)

    async def campaigns(
        self, *, include_opt_in_paths: bool = True, status: Literal["active", "ended"] | None = None
    ) -> list[Campaign]:
        """All campaigns, with their opt-in paths (the only place opt-in paths are listed, B3)."""
        params = {"include_opt_in_paths": "1" if include_opt_in_paths else "0"}
        if status is not None:
            params["status"] = status
        root = await self._get("campaigns", params)
        try:
            return [parse_campaign(el) for el in root.findall("campaigns/campaign")]
        except ValueError as exc:
            raise MalformedResponseError(self.system, f"unreadable campaign: {exc}") from exc


__all__ = ["DEFAULT_BASE_URL", "MobileCommonsClient", "html_error_text", "parse_xml"]
