"""Integration kind ``everyaction_mobilecommons``: EveryAction (NGP VAN API v4) <-> Mobile Commons.

Importing this package registers the kind. Modules: :mod:`.config` (the config section), :mod:`.rules` (the
sync rules, pure), :mod:`.ea_to_mc` (nightly) and :mod:`.mc_to_ea` (every 5 minutes by day), :mod:`.kind`
(the plug into the daemon), :mod:`.sandbox` (demo data for ``crmsync sandbox``).
"""

from crmsync.daemon.integrations.everyaction_mobilecommons.kind import EveryActionMobileCommons

__all__ = ["EveryActionMobileCommons"]
