"""Delivery entry ids: ULID-style, so a folder listing (or an index) sorts them by creation."""

from __future__ import annotations

import datetime as dt
import os

import attrs

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS = 80


def _base32(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


@attrs.define
class IdGenerator:
    """ULID-style ids (48-bit milliseconds + 80 random bits, Crockford base32): they sort by
    creation time as strings, and within one millisecond by order of creation (the random
    part is incremented, as the ULID spec's monotonic mode does)."""

    _last_ms: int = -1
    _last_rand: int = 0

    def new(self, when: dt.datetime) -> str:
        ms = max(int(when.timestamp() * 1000), 0)
        if ms <= self._last_ms:
            ms, rand = self._last_ms, self._last_rand + 1
        else:
            rand = int.from_bytes(os.urandom(_RANDOM_BITS // 8), "big") >> 1  # room to increment
        self._last_ms, self._last_rand = ms, rand
        return _base32(ms, 10) + _base32(rand, 16)
