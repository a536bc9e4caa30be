"""One package per external system: API client, record translation, and a faithful simulator.

Shared pieces live beside them: :mod:`crmsync.connectors.http` (the retrying API client base and the
retriable-versus-fatal error split) and :mod:`crmsync.connectors.simkit` (simulator plumbing and fault injection).
"""
