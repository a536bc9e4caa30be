"""Mobile Commons (Upland Mobile Messaging) connector: REST client, record model and simulator."""

from crmsync.connectors.mobilecommons.client import MobileCommonsClient
from crmsync.connectors.mobilecommons.records import (
    Campaign,
    OptInPath,
    Profile,
    ProfileUpdate,
    Subscription,
    is_opted_in,
    mc_phone,
    normalize_us_phone,
)
from crmsync.connectors.mobilecommons.simulator import MobileCommonsSimulator, WelcomeMessage

__all__ = [
    "Campaign",
    "MobileCommonsClient",
    "MobileCommonsSimulator",
    "OptInPath",
    "Profile",
    "ProfileUpdate",
    "Subscription",
    "WelcomeMessage",
    "is_opted_in",
    "mc_phone",
    "normalize_us_phone",
]
