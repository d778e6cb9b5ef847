"""A small progress bar for long CLI work (tqdm on stderr)."""

from __future__ import annotations

import sys


class ProgressBar:
    """Context manager; update(done, total) moves the bar."""

    def __init__(self, description: str):
        self.description = description
        self._bar = None

    def __enter__(self) -> "ProgressBar":
        return self

    def update(self, done: int, total: int, **postfix) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=total, desc=self.description, file=sys.stderr, dynamic_ncols=True)
        if total != self._bar.total:
            self._bar.total = total
        self._bar.n = done
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)
        self._bar.refresh()

    def __exit__(self, *exc) -> bool:
        if self._bar is not None:
            self._bar.close()
        return False
