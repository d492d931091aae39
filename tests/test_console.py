"""Commands finish their work when whoever reads their output has gone (`ticklake down | head -1`)."""

from __future__ import annotations

import os
import subprocess

from runtime.console import ReaderGoneTolerant
from tests.support.stack import TICKLAKE


def closed_pipe() -> int:
    """The write end of a pipe whose reader has already gone."""
    r, w = os.pipe()
    os.close(r)
    return w


def test_writes_after_the_reader_left_are_dropped_not_raised():
    w = closed_pipe()
    with os.fdopen(w, "w") as raw:
        out = ReaderGoneTolerant(raw)
        for i in range(10_000):  # several pipe buffers' worth, so the OS write happens mid-loop
            out.write(f"line {i}\n")
        out.flush()
        assert out.reader_gone
        # the descriptor now leads to /dev/null: the stream's own close (and the interpreter's
        # flush at exit) no longer fails
        raw.write("after\n")
        raw.flush()


def test_commands_exit_normally_with_their_stdout_closed(tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "TICKLAKE_HOME": str(home)}
    for args, code in ((["status"], 3), (["down"], 0)):
        w = closed_pipe()
        try:
            res = subprocess.run(
                [str(TICKLAKE), *args], stdout=w, stderr=subprocess.PIPE, text=True, env=env, timeout=120, check=False
            )
        finally:
            os.close(w)
        assert res.returncode == code, res.stderr
        assert "BrokenPipeError" not in res.stderr and "Traceback" not in res.stderr, res.stderr
