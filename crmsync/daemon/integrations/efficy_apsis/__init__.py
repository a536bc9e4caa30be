"""``efficy_apsis``: Efficy Enterprise -> APSIS One, with opt-outs flowing back (seed 004).

Importing the package registers the kind. Modules: :mod:`.config` (the TOML section), :mod:`.rules` (the
sync rules, pure), :mod:`.store` (what is kept in the store), :mod:`.writer` (per-profile upserts),
:mod:`.realtime`, :mod:`.full_sync`, :mod:`.consent_backflow`, :mod:`.tags` (the flows), :mod:`.kind` (the
wiring) and :mod:`.sandbox` (simulators and demo data for ``crmsync sandbox``).
"""

from crmsync.daemon.integrations.efficy_apsis.kind import EfficyApsisKind

__all__ = ["EfficyApsisKind"]
