"""crmsync: keeps contact records and messaging consent in sync between CRMs and messaging platforms."""

__version__ = "0.1.0"
