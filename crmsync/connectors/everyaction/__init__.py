"""EveryAction / NGP VAN API v4 connector: client, record translation, and a faithful simulator.

* :mod:`.client`: :class:`EveryActionClient` (auth, errors, people matching/updates, change exports);
* :mod:`.records`: the person as crmsync sees it, opt-in codes, phone normalisation, CSV rows (pure);
* :mod:`.exports`: changed-entity export jobs as data (pure);
* :mod:`.errors`: VAN-specific refinements of the shared error split;
* :mod:`.simulator`: :class:`EveryActionSimulator`, the in-memory API for tests and the sandbox.
"""

from crmsync.connectors.everyaction.client import DEFAULT_BASE_URL, DEFAULT_EXPAND, EveryActionClient
from crmsync.connectors.everyaction.errors import (
    ExportFileExpiredError,
    ExportJobFailedError,
    ExportJobTimeoutError,
    UnmatchableCandidateError,
)
from crmsync.connectors.everyaction.exports import ExportFile, ExportJob
from crmsync.connectors.everyaction.records import (
    ContactChange,
    MatchCandidate,
    MatchResult,
    OptInStatus,
    VanAddress,
    VanEmail,
    VanIdentifier,
    VanPerson,
    VanPhone,
    match_candidate,
    normalize_us_phone,
    van_phone,
)
from crmsync.connectors.everyaction.simulator import SIM_API_KEY, EveryActionSimulator

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_EXPAND",
    "SIM_API_KEY",
    "ContactChange",
    "EveryActionClient",
    "EveryActionSimulator",
    "ExportFile",
    "ExportFileExpiredError",
    "ExportJob",
    "ExportJobFailedError",
    "ExportJobTimeoutError",
    "MatchCandidate",
    "MatchResult",
    "OptInStatus",
    "UnmatchableCandidateError",
    "VanAddress",
    "VanEmail",
    "VanIdentifier",
    "VanPerson",
    "VanPhone",
    "match_candidate",
    "normalize_us_phone",
    "van_phone",
]
