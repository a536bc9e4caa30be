"""APSIS One connector: OAuth2 client, record builders and a faithful in-memory simulator.

* :mod:`.client` — :class:`ApsisClient`, the typed operations (profiles, merges, v2 attributes, Consent 2.0,
  the streamed consent report, tags, bulk imports v2) over the retrying
  :class:`~crmsync.connectors.http.ApiClient`;
* :mod:`.auth` — client-credentials token cache shared by concurrent requests;
* :mod:`.problems` — problem+json error parsing and the typed errors it raises;
* :mod:`.limits` — the sliding-window limiter used for the import endpoint's 10/minute;
* :mod:`.records` — pure data: profile view, merge-patch and consent bodies, import files, byte chunker;
* :mod:`.simulator` — :class:`ApsisSimulator`, the stand-in used by tests and ``crmsync sandbox``.

API facts come from ``research/efficy_apsis.md`` §4–§10; unverified ones are constructor settings.
"""

from crmsync.connectors.apsis.client import ApsisClient, ImportResult
from crmsync.connectors.apsis.records import (
    CHANNEL_EMAIL,
    CHANNEL_SMS,
    KEYSPACE_CRM_ID,
    SECTION_DEFAULT,
    ApsisProfile,
    Consent,
    ConsentKey,
)
from crmsync.connectors.apsis.simulator import ApsisSimulator

__all__ = [
    "CHANNEL_EMAIL",
    "CHANNEL_SMS",
    "KEYSPACE_CRM_ID",
    "SECTION_DEFAULT",
    "ApsisClient",
    "ApsisProfile",
    "ApsisSimulator",
    "Consent",
    "ConsentKey",
    "ImportResult",
]
