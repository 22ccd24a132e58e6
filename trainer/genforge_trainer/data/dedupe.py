"""Near-duplicate detection (``preparation.dedupe``).

Two images are near-duplicates when their perceptual hashes differ in at most
``max_distance`` bits *and* their colour layouts (4×4 grid of mean colours, see
:func:`imageops.perceptual_hash`) differ by at most ``max_colour_delta`` in every cell and
channel (pHash is computed on grey; the colour check keeps a red and a blue circle apart).
The first item seen is kept, later ones are dropped — with the reader's deterministic
order, the same input always keeps the same items.

Lookups are sub-linear: each 63-bit hash is split into ``max_distance + 1`` bands; by the
pigeonhole principle two hashes within ``max_distance`` bits agree exactly on at least one
band, so only items sharing a band are compared (multi-index hashing).
"""

from __future__ import annotations

from collections import defaultdict

HASH_BITS = 63
DEFAULT_MAX_DISTANCE = 4
DEFAULT_MAX_COLOUR_DELTA = 10


def _max_delta(a: bytes, b: bytes) -> int:
    if len(a) != len(b):
        return 255
    return max((abs(x - y) for x, y in zip(a, b, strict=True)), default=0)


class NearDuplicateIndex:
    def __init__(
        self, max_distance: int = DEFAULT_MAX_DISTANCE, max_colour_delta: int = DEFAULT_MAX_COLOUR_DELTA
    ):
        self.max_distance = max_distance
        self.max_colour_delta = max_colour_delta
        bands = max_distance + 1
        width = -(-HASH_BITS // bands)
        self._bands = [(i * width, min(HASH_BITS, (i + 1) * width)) for i in range(bands)]
        self._tables: list[defaultdict[int, list[int]]] = [defaultdict(list) for _ in self._bands]
        self._entries: list[tuple[int, bytes, str]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def _keys(self, phash: int) -> list[int]:
        return [(phash >> lo) & ((1 << (hi - lo)) - 1) for lo, hi in self._bands]

    def find(self, phash: int, colour: bytes) -> str | None:
        """The id of an indexed near-duplicate of this hash, or ``None``."""
        seen: set[int] = set()
        for table, key in zip(self._tables, self._keys(phash), strict=True):
            for position in table.get(key, ()):
                if position in seen:
                    continue
                seen.add(position)
                other_hash, other_colour, other_id = self._entries[position]
                if (
                    bin(phash ^ other_hash).count("1") <= self.max_distance
                    and _max_delta(colour, other_colour) <= self.max_colour_delta
                ):
                    return other_id
        return None

    def add(self, phash: int, colour: bytes, item_id: str) -> None:
        position = len(self._entries)
        self._entries.append((phash, colour, item_id))
        for table, key in zip(self._tables, self._keys(phash), strict=True):
            table[key].append(position)

    def check_and_add(self, phash: int, colour: bytes, item_id: str) -> str | None:
        """Index the item unless it duplicates one already indexed; return that one's id."""
        duplicate_of = self.find(phash, colour)
        if duplicate_of is None:
            self.add(phash, colour, item_id)
        return duplicate_of
