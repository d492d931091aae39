"""Command output that outlives its reader.

`ticklake down | head -1` closed the pipe after one line, and the next progress line raised
BrokenPipeError in the middle of stopping the stack: runs marked CANCELING and two dozen
processes left up. A command's work must not depend on whether anyone still reads what it
says, so once a stream's reader is gone its remaining output is dropped and the command goes on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class ReaderGoneTolerant:
    """A text stream whose writes and flushes never raise because the reader went away.

    On the first BrokenPipeError the stream's file descriptor is pointed at /dev/null (so the
    interpreter's own flush at exit is quiet too) and the output is dropped from then on."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self.reader_gone = False

    def _drop_output(self) -> None:
        self.reader_gone = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self._stream.fileno())
            finally:
                os.close(devnull)
        except (OSError, ValueError):  # no real descriptor (e.g. an in-memory stream)
            pass

    def write(self, text: str) -> int:
        if self.reader_gone:
            return len(text)
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._drop_output()
            return len(text)

    def flush(self) -> None:
        if self.reader_gone:
            return
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._drop_output()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextmanager
def output_survives_closed_reader() -> Iterator[None]:
    """Within the block, sys.stdout and sys.stderr drop output once their reader is gone."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = ReaderGoneTolerant(saved[0]), ReaderGoneTolerant(saved[1])  # type: ignore[assignment]
    try:
        yield
    finally:
        for wrapper in (sys.stdout, sys.stderr):
            wrapper.flush()
        sys.stdout, sys.stderr = saved
