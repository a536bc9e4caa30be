"""Demo data for ``crmsync sandbox``: both simulators on loopback, seeded so that every rule shows up.

About ``contacts`` EveryAction people, cycling through: opted in (subscribed, one welcome each), opted out,
unknown status (Conservative skips them as ``not_opted_in``), non-US (``country_not_us``), a home phone only
(``no_mobile_number``), no first name (``required_field_empty:first_name``, the default mapping requires it),
some already in Mobile Commons (matched by mobile number); plus Mobile Commons-only opt-ins with an email
(become EveryAction records), one without email (``no_email``) and one opt-out of a linked person.
"""

from __future__ import annotations

from pathlib import Path

import trio

from crmsync.clock import WallClock
from crmsync.connectors.everyaction import SIM_API_KEY, EveryActionSimulator, OptInStatus
from crmsync.connectors.mobilecommons import MobileCommonsSimulator
from crmsync.connectors.simkit import serve_app
from crmsync.daemon.integrations.base import SandboxPart

SANDBOX_LATENCY = 0.02  # seconds per simulated API call

FIRST = ["Ann", "Bob", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jo"]
LAST = ["Lee", "Ray", "Moss", "Park", "Diaz", "Khan", "Ortiz", "Nagy"]


def _phone(i: int) -> str:
    return f"312555{i:04d}"


def seed(ea: EveryActionSimulator, mc: MobileCommonsSimulator, contacts: int) -> str:
    """Seed both simulators; returns the default web opt-in path id."""
    campaign = mc.add_campaign("Supporters", description="Sandbox campaign")
    path = mc.add_opt_in_path(campaign.id, "Web join", welcome_message="Thanks for joining! Reply STOP to quit.")
    kinds = ["in", "in", "out", "unknown", "in_existing", "non_us", "landline", "no_first_name"]
    for i in range(max(contacts, len(kinds))):
        kind = kinds[i % len(kinds)]
        first = None if kind == "no_first_name" else FIRST[i % len(FIRST)]
        last = LAST[i % len(LAST)]
        status = {"in": OptInStatus.OPT_IN, "in_existing": OptInStatus.OPT_IN, "out": OptInStatus.OPT_OUT,
                  "unknown": None}.get(kind, OptInStatus.OPT_IN)
        if kind == "in_existing":  # already in Mobile Commons, found by mobile number
            mc.add_profile(_phone(i), first_name=first or "", last_name=last, country="US")
        if kind == "out":  # opted out in EveryAction while still subscribed in Mobile Commons
            mc.add_profile(_phone(i), first_name=first or "", last_name=last, country="US")
            mc.opt_in(_phone(i), path.id)
        ea.add_person(first, last, email=f"{(first or 'x').lower()}.{last.lower()}{i}@example.org",
                      phone=_phone(i), phone_type="H" if kind == "landline" else "C", phone_opt_in=status,
                      address_line1=f"{100 + i} Main St", city="Toronto" if kind == "non_us" else "Chicago",
                      state="ON" if kind == "non_us" else "IL", zip="60601",
                      country_code="CA" if kind == "non_us" else "US")
    # Mobile Commons-only people: keyword opt-ins with and without an email
    base = 9000
    for j in range(max(2, contacts // 10)):
        mc.add_profile(_phone(base + j), email=f"texter{j}@example.org", first_name=FIRST[j % len(FIRST)],
                       last_name="Texter", country="US")
        mc.opt_in(_phone(base + j), path.id)
    mc.add_profile(_phone(base + 500), first_name="No", last_name="Email", country="US")
    mc.opt_in(_phone(base + 500), path.id)
    return path.id


async def build_sandbox(*, name: str, clock: WallClock, contacts: int, secrets_dir: Path,
                        nursery: trio.Nursery) -> SandboxPart:
    # a modest per-call latency, as real APIs have; the first runs of the demo data still take seconds
    ea = EveryActionSimulator(clock, rows_per_file=max(10, contacts // 4), polls_to_complete=2,
                              latency=SANDBOX_LATENCY)
    mc = MobileCommonsSimulator(clock, api_token=None, latency=SANDBOX_LATENCY)
    path_id = seed(ea, mc, contacts)
    # VAN's export windows have second resolution: let the seeded changes fall before the kickoff run
    await trio.sleep(1.1)
    ea_url = await nursery.start(serve_app, ea)
    mc_url = await nursery.start(serve_app, mc)
    ea.public_url = ea_url  # export download links point at the served address
    (secrets_dir / "everyaction-api-key").write_text(SIM_API_KEY + "\n")
    (secrets_dir / "mobilecommons-password").write_text(mc.password + "\n")
    for f in ("everyaction-api-key", "mobilecommons-password"):
        (secrets_dir / f).chmod(0o600)
    skipped = next(p for p in ea.people() if p.first_name is None)  # Required? first name: skipped
    return SandboxPart(
        explain_example=str(skipped.van_id),
        explain_note="why this record is skipped (required_field_empty:first_name), rule by rule",
        config={
            "kind": "everyaction_mobilecommons",
            "notes": "sandbox: simulated EveryAction and Mobile Commons",
            "default_opt_in_path_id": path_id,
            "liberal_sync": False,
            "everyaction": {"application_name": "crmsyncSandbox",
                            "api_key_file": str(secrets_dir / "everyaction-api-key"),
                            "host": f"{ea_url}/v4", "export_poll_interval": "1s"},
            "mobilecommons": {"auth": "basic", "login": mc.login,
                              "password_file": str(secrets_dir / "mobilecommons-password"),
                              "base_url": f"{mc_url}/api"},
            "field_mappings": {"first_name": {"required": True}},
        },
        kickoff=["ea_to_mc", "mc_to_ea"],
        description=[
            f"EveryAction simulator {ea_url}/v4, Mobile Commons simulator {mc_url}/api",
            "ea_to_mc report: created (new opt-ins, one welcome each), updated (an EveryAction opt-out",
            "  applied in Mobile Commons), skipped by reason: not_opted_in, country_not_us,",
            "  no_mobile_number, required_field_empty:first_name",
            "mc_to_ea report: Mobile Commons opt-ins with email become EveryAction records; no_email",
        ],
    )
