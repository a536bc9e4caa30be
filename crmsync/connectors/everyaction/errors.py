"""EveryAction-specific refinements of the shared retriable/fatal error split.

Each subclasses the shared class the daemon already handles, so a caller that knows nothing about VAN still
does the right thing (skip the record for fatal ones, try again next cycle for retriable ones).
"""

from __future__ import annotations

from crmsync.connectors.errors import FatalApiError, RetriableApiError

SYSTEM = "everyaction"


class UnmatchableCandidateError(FatalApiError):
    """Refused locally: the candidate has none of VAN's minimum match combinations (research A3.2).

    Sending it anyway would make ``find`` never match and ``findOrCreate`` create a duplicate every call.
    """

    def __init__(self, message: str = "candidate has no minimum match combination "
                 "(email; or first+last name with email, phone, zip5+dateOfBirth, or street+zip5)"):
        super().__init__(SYSTEM, message, code="UNMATCHABLE_CANDIDATE")


class ExportJobFailedError(FatalApiError):
    """The changed-entity export job ended in ``Error``/``Failed``/``Cancelled``.

    ``code`` carries VAN's reference code, which VAN support asks for.
    """


class ExportJobTimeoutError(RetriableApiError):
    """The job did not complete in time (polling can stall, research C8). Retry with a new job later."""


class ExportFileExpiredError(FatalApiError):
    """The pre-signed download link was refused (expired: 24 hours or 20 days, the docs disagree).

    Fatal for this file; the remedy is a new export job for the same window.
    """


class ExportColumnMissingError(FatalApiError):
    """The first export file lacks columns that were requested.

    The real API does not echo ``requestedFields`` in its answer (issue 7, item 11), so the header is the only
    evidence of what was accepted; only a few Contacts column names are confirmed. Values are never silently
    read as empty: the run fails and names the columns.
    """

    def __init__(self, columns: tuple[str, ...], header: tuple[str, ...]):
        self.columns = columns
        self.header = header
        super().__init__(SYSTEM, f"the Contacts export has no column {', '.join(map(repr, columns))} "
                         f"(its header: {', '.join(header)})", code="EXPORT_COLUMN_MISSING")
