"""Run the lake sink's `python -m` entry with a kill -9 at a chosen table commit (a test hook
kept out of the production module).

    TICKLAKE_LAKE_SINK_TEST_HOOK=<point>:<n> python -m tests.support.sink_crash [sink options]

SIGKILLs the process when the n-th table commit of this process reaches <point>:
after-write (files written, not committed) or after-commit (committed, later tables of the
batch not yet). Without the variable it is the plain sink.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from streaming.lake import sink

TEST_HOOK_ENV = "TICKLAKE_LAKE_SINK_TEST_HOOK"
POINTS = ("after-write", "after-commit")
log = logging.getLogger(__name__)


def _kill(point: str, n: int) -> None:
    log.warning("test hook: SIGKILL at %s of table commit %d", point, n)
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str, nth: int) -> None:
    if point not in POINTS:
        raise ValueError(f"{TEST_HOOK_ENV}: unknown point {point!r}")
    if point == "after-write":
        commit = sink.LakeSink._commit_with_retry

        def before_commit(self, *args, **kwargs):
            if self.stats.commits + 1 == nth:  # files of this table commit are written
                _kill(point, nth)
            return commit(self, *args, **kwargs)

        sink.LakeSink._commit_with_retry = before_commit
    else:
        commit_table = sink.LakeSink.commit_table

        def after_commit(self, tb):
            before = self.stats.commits
            done = commit_table(self, tb)
            if self.stats.commits > before and self.stats.commits == nth:
                _kill(point, nth)
            return done

        sink.LakeSink.commit_table = after_commit


def main(argv: list[str]) -> int:
    raw = os.environ.get(TEST_HOOK_ENV)
    if raw:
        point, _, n = raw.partition(":")
        install(point, int(n or "1"))
    return sink.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
