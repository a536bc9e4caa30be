"""The integration kinds: each one the flows that move records between two connectors.

Built in: ``everyaction_mobilecommons`` and ``efficy_apsis``. More can be registered from a plugin module
listed in ``[daemon] plugins`` (the test suite registers a fake kind this way).
"""
