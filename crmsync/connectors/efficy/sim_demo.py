"""The Efficy simulator's contact and link tables, with demo contacts generated from their key.

Split from :mod:`.simulator` (routes and rendering) by concern. A demo contact (``seed_demo``) is not stored:
its columns and CRM Profiles are computed from its key and the seed, deterministically, whenever they are
read, so a million demo contacts cost a few bytes each and a benchmark can hold them. A demo contact that
is changed (columns, links) is copied into the stored rows first and behaves as any other from then on;
a deleted one is remembered as gone. Readers see one table either way: the simulator answers the same.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

FIRST_NAMES = ("Jane", "Lucas", "Emma", "Noah", "Olivia", "Louis", "Mila", "Arthur")
LAST_NAMES = ("Peeters", "Janssens", "Maes", "Jacobs", "Mertens", "Willems", "Claes", "Goossens")
COUNTRIES = ("BE", "NL", "FR", "SE")
LANGUAGES = ("NL", "FR", "EN")


@dataclass(frozen=True)
class DemoContacts:
    """``count`` contacts from key ``first_id`` on, each computed from ``(seed, index)``: about 60 % hold
    the newsletter profile, 30 % the SMS one, 90 % are open, 70 % have a mobile number."""

    first_id: int
    count: int
    seed: int
    created: datetime
    newsletter_profile: int
    sms_profile: int
    defaults: tuple[tuple[str, Any], ...]

    def __contains__(self, contact_id: object) -> bool:
        return isinstance(contact_id, int) and self.first_id <= contact_id < self.first_id + self.count

    def _draws(self, contact_id: int) -> tuple[int, int]:
        index = contact_id - self.first_id
        digest = hashlib.blake2b(f"{self.seed}:{index}".encode(), digest_size=16).digest()
        return index, int.from_bytes(digest, "big")

    def row(self, contact_id: int) -> dict[str, Any]:
        index, h = self._draws(contact_id)
        first, h = FIRST_NAMES[h % 8], h // 8
        last, h = LAST_NAMES[h % 8], h // 8
        h //= 1_000_000  # the two profile draws (see links)
        opened, h = h % 1000 >= 100, h // 1000
        has_mobile, h = h % 1000 < 700, h // 1000
        mobile, h = f"+3247{h % 10**7:07d}", h // 10**7
        country, h = COUNTRIES[h % 4], h // 4
        language = LANGUAGES[h % 3]
        row = dict(self.defaults)
        row.update({"NAME": last, "FIRSTNAME": first, "EMAIL1": f"{first}.{last}.{index}@example.com".lower(),
                     "OPENED": opened, "MOBILE": mobile if has_mobile else "", "COUNTRY": country,
                     "LANGUAGE": language, "D_CREATE": self.created, "D_CHANGE": self.created})
        return row

    def links(self, contact_id: int) -> set[int]:
        _, h = self._draws(contact_id)
        h //= 64
        linked = set()
        if h % 1000 < 600:
            linked.add(self.newsletter_profile)
        if h // 1000 % 1000 < 300:
            linked.add(self.sms_profile)
        return linked


class _Overlay:
    """What the stored rows/sets and the demo share: membership, deletion, key order."""

    def __init__(self) -> None:
        self.demo: DemoContacts | None = None
        self.gone: set[int] = set()  # demo contacts deleted

    def _is_demo(self, contact_id: object) -> bool:
        return self.demo is not None and contact_id in self.demo and contact_id not in self.gone


class ContactRows(_Overlay, MutableMapping[int, dict[str, Any]]):
    """``K_CONTACT`` -> columns. ``rows[k]`` of a demo contact is a fresh computed dict: change a row only
    through :meth:`for_update`, which stores it first."""

    def __init__(self) -> None:
        super().__init__()
        self.stored: dict[int, dict[str, Any]] = {}

    def __getitem__(self, contact_id: int) -> dict[str, Any]:
        row = self.stored.get(contact_id)
        if row is not None:
            return row
        if self._is_demo(contact_id):
            assert self.demo is not None
            return self.demo.row(contact_id)
        raise KeyError(contact_id)

    def __contains__(self, contact_id: object) -> bool:
        return contact_id in self.stored or self._is_demo(contact_id)

    def for_update(self, contact_id: int) -> dict[str, Any]:
        if contact_id not in self.stored:
            self.stored[contact_id] = self[contact_id]
        return self.stored[contact_id]

    def __setitem__(self, contact_id: int, row: dict[str, Any]) -> None:
        self.stored[contact_id] = row

    def __delitem__(self, contact_id: int) -> None:
        if contact_id not in self:
            raise KeyError(contact_id)
        self.stored.pop(contact_id, None)
        if self.demo is not None and contact_id in self.demo:
            self.gone.add(contact_id)

    def __iter__(self) -> Iterator[int]:
        """Keys in key order."""
        return iter(self.sorted_keys())

    def __len__(self) -> int:
        return len(self.sorted_keys())

    def sorted_keys(self) -> array[int] | list[int]:
        if self.demo is None:
            return sorted(self.stored)
        demo = self.demo
        extra = [k for k in self.stored if k not in demo]
        keys = array("q", (k for k in range(demo.first_id, demo.first_id + demo.count) if k not in self.gone))
        if extra:
            return sorted([*keys, *extra])
        return keys  # a compact index: the demo's keys are already in order


class LinkSets(_Overlay, MutableMapping[int, set[int]]):
    """``K_CONTACT`` -> the CRM Profiles linked. Like :class:`ContactRows`: change a set only through
    :meth:`for_update`."""

    def __init__(self, rows: ContactRows) -> None:
        super().__init__()
        self.rows = rows
        self.stored: dict[int, set[int]] = {}

    def __getitem__(self, contact_id: int) -> set[int]:
        links = self.stored.get(contact_id)
        if links is not None:
            return links
        if self.rows._is_demo(contact_id):
            assert self.rows.demo is not None
            return self.rows.demo.links(contact_id)
        raise KeyError(contact_id)

    def __contains__(self, contact_id: object) -> bool:
        return contact_id in self.stored or self.rows._is_demo(contact_id)

    def for_update(self, contact_id: int) -> set[int]:
        if contact_id not in self.stored:
            self.stored[contact_id] = self[contact_id]
        return self.stored[contact_id]

    def __setitem__(self, contact_id: int, links: set[int]) -> None:
        self.stored[contact_id] = links

    def __delitem__(self, contact_id: int) -> None:
        self.stored.pop(contact_id, None)  # a demo contact's links go with its row (ContactRows.gone)

    def __iter__(self) -> Iterator[int]:
        return (k for k in self.rows if k in self)

    def __len__(self) -> int:
        return sum(1 for _ in self)
