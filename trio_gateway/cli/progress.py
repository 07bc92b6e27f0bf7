"""A one-line progress bar on a terminal, for CLI work over many files. Silent elsewhere:
a pipe or a log file gets no carriage-return noise."""

from __future__ import annotations

from typing import IO

import attrs

_WIDTH = 30
# Below this many items the work is over before a bar would be read.
_MIN_ITEMS = 200


@attrs.define
class Progress:
    total: int
    stream: IO[str]
    label: str = ""
    _shown: int = -1

    @property
    def enabled(self) -> bool:
        return self.total >= _MIN_ITEMS and self.stream.isatty()

    def update(self, done: int, _total: int | None = None) -> None:
        filled = _WIDTH * done // max(self.total, 1)
        if not self.enabled or (filled == self._shown and done != self.total):
            return
        self._shown = filled
        bar = "#" * filled + "." * (_WIDTH - filled)
        self.stream.write(f"\r{self.label}[{bar}] {done}/{self.total}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._shown >= 0:
            self.stream.write("\n")
            self.stream.flush()
