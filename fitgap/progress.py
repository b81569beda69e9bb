"""Progress bars that suit where the output goes: tqdm's live bar on a terminal; in a log file (a
scheduler's job, `make demo > log`) one plain line at most every 30 s, instead of thousands of
carriage-return redraws on a single line of several MB."""
from __future__ import annotations

import sys

from tqdm import tqdm

LOG_INTERVAL_S = 30.0


class _Lines:
    """A file for tqdm that turns each redraw into one line of its own."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, s: str) -> None:
        s = s.replace("\r", "").strip()
        if s:
            self.stream.write(s + "\n")

    def flush(self) -> None:
        self.stream.flush()


class _LogBar(tqdm):
    """tqdm for a log file: postfix and description changes wait for the next line instead of
    forcing one (set_postfix refreshes at once by default: a line every few steps)."""

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_description(self, desc=None, refresh=True):
        super().set_description(desc, refresh=False)


def progress(iterable=None, **kwargs) -> tqdm:
    """tqdm(iterable, **kwargs) on a terminal; plain lines, one per LOG_INTERVAL_S at most, when
    stderr is not a terminal. `disable` is kept as given (e.g. every rank but 0)."""
    stream = kwargs.pop("file", sys.stderr)
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(iterable, file=stream, **kwargs)
    kwargs.pop("dynamic_ncols", None)
    kwargs.update(file=_Lines(stream), mininterval=LOG_INTERVAL_S, maxinterval=LOG_INTERVAL_S, ncols=100)
    return _LogBar(iterable, **kwargs)
