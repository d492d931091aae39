"""The one shape of a long-running loop: stop request, start/step/close lifecycle, worker thread.

Every service (normalizer, feature processor, inference, lake sink, ClickHouse live, pragma
publisher, collector shard) runs until something asks it to stop, and must then finish the
batch in flight (commit it, flush the producer, close sockets) before the process ends.
Written once here so the services cannot drift apart:

* `ServiceLoop` — the lifecycle base: `start()` (connect, assign, restore state), `run_once()`
  (one batch; truthy when it made progress), `close()` (release clients), and `run()` driving
  them until `request_stop()` (a signal handler, another thread) or, for tests and catch-up
  runs, until `idle_exit_s` without progress or `max_seconds` elapsed. `close()` runs however
  `run()` ends; `summary()` is the stop line, one per loop whoever ran it.
* `Worker` — a target in a daemon thread with a `done` Event and its outcome (result or error).
* `run_in_worker()` — how a Dagster op (or any supervising thread) runs a loop: the loop runs
  in a daemon worker thread while this thread waits; an exception raised here (a Dagster run
  termination interrupts the op's thread) becomes a stop request, and this thread waits for
  the worker to finish its batch before re-raising. It waits on an Event, not `Thread.join`:
  on CPython < 3.13 a join interrupted by a signal can later return before the thread has
  finished, which would cut the final commit short.

Plain Python (threading, signal): collectors import it too, and nothing here knows Dagster.
"""

from __future__ import annotations

import gc
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

#: How long a stopped worker may take to commit its batch and close before we give up on it.
STOP_TIMEOUT_S = 120.0
#: How often the supervising thread wakes while it waits (to run on_tick, and to notice a
#: signal promptly: a signal handler only runs in the main thread between waits).
WAIT_SLICE_S = 0.5

#: CPython's collector thresholds for a batch-processing loop (processors, lake sink). They
#: allocate messages and per-record values and keep buffered rows alive until a window or a
#: micro-batch closes; with the default gen-0 threshold (700 allocations) a collection ran
#: every few records and full ones walked every live row. Raised (and the start-up objects
#: frozen out of the collector's reach), bench_processing's pure logic ran +10 % (normalizer)
#: and +27 % (feature processor) in CPU time, the lake sink 19.6 -> 15.7 us CPU per record.
#: Cyclic garbage is rare here (refcounting frees the rows).
GC_THRESHOLDS = (100_000, 50, 100)


def collect_for_batches() -> None:
    """Call once a loop has started: its modules, resources and restored state are never
    garbage, so they are frozen out of every later collection, and the thresholds raised."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class _Log(Protocol):
    def info(self, msg: str) -> Any: ...


class ServiceLoop:
    """Base of every long-running loop. Subclasses implement `start`, `run_once`, `close` and
    `started`; `run`, `request_stop` and the signal handlers are shared."""

    #: Service name (metrics labels, thread names, log lines).
    name = "service"

    def __init__(self) -> None:
        self.stop_event = threading.Event()
        self._last_progress = time.monotonic()

    # -- what a loop implements ----------------------------------------------------------

    @property
    def started(self) -> bool:
        """True once `start()` connected (run() then does not start again)."""
        raise NotImplementedError

    def start(self) -> Any:
        raise NotImplementedError

    def run_once(self) -> Any:
        """One batch; a truthy result means progress (resets the idle clock)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release clients; called once however run() ends (must be safe after a failed start)."""

    def summary(self) -> str:
        """What the loop did, for the one line logged when it stops (the standalone entry and
        the Dagster op log the same line): its `stats`; a loop whose stats do not hold
        everything worth reading (dead letters by reason, late rows) adds it."""
        return str(getattr(self, "stats", None))

    # -- shared ----------------------------------------------------------------------------

    def mark_progress(self) -> None:
        """Reset the idle clock (e.g. when the consumer joins its group: idle time counts from then)."""
        self._last_progress = time.monotonic()

    def request_stop(self, *_: object) -> None:
        """Finish the current batch, then return from run() (any thread; also a signal handler)."""
        self.stop_event.set()

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT become a stop request (standalone `python -m`; main thread only)."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(
        self,
        *,
        idle_exit_s: float | None = None,
        max_seconds: float | None = None,
        on_tick: Callable[[Any], None] | None = None,
        tick_s: float = 60.0,
    ) -> Any:
        """Loop until stop is requested (or idle_exit_s without progress / max_seconds elapsed);
        returns the loop's `stats`."""
        if not self.started:
            self.start()
        began = last_tick = time.monotonic()
        self._last_progress = began
        try:
            while not self.stop_event.is_set():
                if self.run_once():
                    self.mark_progress()
                now = time.monotonic()
                if on_tick is not None and now - last_tick >= tick_s:
                    on_tick(self)
                    last_tick = now
                if idle_exit_s is not None and now - self._last_progress >= idle_exit_s:
                    break
                if max_seconds is not None and now - began >= max_seconds:
                    break
        finally:
            self.close()
        return getattr(self, "stats", None)


class Worker:
    """`target` running in a daemon thread: `done` is set once it returned or raised, and
    `outcome()` is its result (or re-raises its error). The one way a loop gets its own thread
    (run_in_worker, and services running several loops side by side)."""

    def __init__(self, target: Callable[[], Any], *, name: str) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._work, args=(target,), name=name, daemon=True)
        self.thread.start()

    def _work(self, target: Callable[[], Any]) -> None:
        try:
            self.result = target()
        except BaseException as exc:  # noqa: BLE001 - re-raised by outcome() in the supervising thread
            self.error = exc
        finally:
            self.done.set()

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


def run_in_worker(
    target: Callable[[], T],
    *,
    request_stop: Callable[[], None],
    name: str,
    log: _Log | None = None,
    stopping_message: str = "stop requested; finishing the current batch",
    ready: threading.Event | None = None,
    on_tick: Callable[[], None] | None = None,
    tick_s: float = 60.0,
    stop_timeout_s: float = STOP_TIMEOUT_S,
) -> T:
    """Run `target` in a daemon worker thread and return its result (or re-raise its error).

    An exception raised in this thread while waiting (a Dagster run termination, Ctrl-C)
    calls `request_stop` and waits up to `stop_timeout_s` for the worker to finish before it
    is re-raised. `ready`, when given, is awaited (30 s at most) before `request_stop`, for
    loops that can only take a stop request once they exist (the collector's event loop).
    `on_tick` runs in this thread every `tick_s` seconds (e.g. Dagster events, which belong
    to the op's thread)."""
    worker = Worker(target, name=name)
    last_tick = time.monotonic()
    try:
        while not worker.done.wait(WAIT_SLICE_S):
            if on_tick is not None and time.monotonic() - last_tick >= tick_s:
                on_tick()
                last_tick = time.monotonic()
    except BaseException:
        if log is not None:
            log.info(f"{name}: {stopping_message}")
        if ready is not None:
            ready.wait(30)
        request_stop()
        worker.done.wait(stop_timeout_s)
        raise
    return worker.outcome()
