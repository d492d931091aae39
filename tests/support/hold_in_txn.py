"""Run a processor's `python -m` entry with a hold inside one of its transactions (a test hook
kept out of the production modules).

    python -m tests.support.hold_in_txn MODULE --test-hold-in-txn PATH \
        [--test-hold-after-batches N] [--test-hold-with-output] [MODULE's own options]

After producing (and flushing) batch number N, the loop touches PATH and sleeps before it
commits, so a test can kill -9 the process while a transaction with visible output is open.
The hold wraps the loop class's `finalize_txn` (the last step before the offsets join the
transaction), for every TransactionalLoop subclass MODULE defines.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

from streaming.processors.txn_loop import TransactionalLoop


def install(module, path: str, after_batches: int, with_output: bool, seconds: float = 3600.0) -> None:
    for cls in vars(module).values():
        if not (isinstance(cls, type) and issubclass(cls, TransactionalLoop) and cls.__module__ == module.__name__):
            continue
        finalize = cls.finalize_txn

        def held(self, producer, msgs, outs, _finalize=finalize):
            extra = _finalize(self, producer, msgs, outs)
            n = self.stats.batches + 1
            if not ((n < after_batches or not outs) if with_output else n != after_batches):
                producer.flush(30)  # the open transaction's records are now in the log
                Path(path).write_text(str(os.getpid()))
                time.sleep(seconds)
            return extra

        cls.finalize_txn = held


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.support.hold_in_txn")
    ap.add_argument("module")
    ap.add_argument("--test-hold-in-txn", required=True)
    ap.add_argument("--test-hold-after-batches", type=int, default=1)
    ap.add_argument("--test-hold-with-output", action="store_true")
    a, rest = ap.parse_known_args(argv)
    module = importlib.import_module(a.module)
    install(module, a.test_hold_in_txn, a.test_hold_after_batches, a.test_hold_with_output)
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
