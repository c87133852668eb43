"""Run the scheduler's loop in the process's main thread, the one thread that computes with every core.

PyTorch's CPU wheels run intra-op parallelism on GNU OpenMP (libgomp). libgomp counts every OpenMP thread of the
process (the main thread plus each team's workers) and, once that count exceeds the CPUs, stops letting idle
workers spin: each of the ~600 parallel regions of a decode step then wakes its workers from a futex. A second
thread that runs torch with more than one thread (a server's scheduler thread beside the main thread's team)
crosses that line. Measured on the 2-core EPYC (BENCHMARKS.md, "REST API under load"): a 3-row decode step of the
bundled model takes 27 ms in the main thread and 43 ms in a worker thread; 99 ms and 120-128 ms at 32 rows; the
main thread itself slows to 37 ms as soon as another live thread has run a 2-thread op, and stays at 27 ms when
the other threads compute with one thread.

So ``ragqa serve`` with batching on hands the scheduler's loop to :class:`MainThreadHost` (its :meth:`start` is the
scheduler's ``start``), runs uvicorn in a thread, and calls :func:`single_threaded_elsewhere`: the loop keeps
every core in the main thread; request threads (query embedding) and ingest workers compute with one thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class LoopHandle:
    """A loop handed to a host: ``join`` / ``is_alive`` as a thread's, ``ident`` of the thread that runs it."""

    name: str
    done: threading.Event = field(default_factory=threading.Event)
    ident: int | None = None

    def join(self, timeout: float | None = None) -> None:
        self.done.wait(timeout)

    def is_alive(self) -> bool:
        return not self.done.is_set()


def thread_start(loop: Callable[[], None], name: str) -> LoopHandle:
    """The default: ``loop`` in a daemon thread of its own."""
    handle = LoopHandle(name)

    def run() -> None:
        handle.ident = threading.get_ident()
        try:
            loop()
        finally:
            handle.done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    return handle


class MainThreadHost:
    """Loops queued by :meth:`start` (any thread) run one after another in the thread that calls :meth:`serve`."""

    def __init__(self) -> None:
        self._loops: queue.Queue[tuple[Callable[[], None], LoopHandle]] = queue.Queue()

    def start(self, loop: Callable[[], None], name: str) -> LoopHandle:
        handle = LoopHandle(name)
        self._loops.put((loop, handle))
        return handle

    def serve(self, until: Callable[[], bool], poll_s: float = 0.2) -> None:
        """Run queued loops here until ``until()`` is true between them (checked every ``poll_s`` when idle)."""
        while not until():
            try:
                loop, handle = self._loops.get(timeout=poll_s)
            except queue.Empty:
                continue
            handle.ident = threading.get_ident()
            logger.info("running %s in the main thread", handle.name)
            try:
                loop()
            except Exception:  # the loop logs its own failure; the host keeps serving the others
                logger.exception("%s ended with an error", handle.name)
            finally:
                handle.done.set()


def single_threaded_elsewhere(threads: int | None = None) -> int:
    """Keep ``threads`` (default: torch's current count) OpenMP threads for the calling thread and make every thread
    that starts computing with torch later use one (see the module docstring). Returns the caller's thread count."""
    import torch

    n = threads or torch.get_num_threads()
    torch.set_num_threads(n)
    torch.ones(64).sum()  # start this thread's team now: it keeps n threads after the default changes
    setter = threading.Thread(target=torch.set_num_threads, args=(1,), name="omp-default")
    setter.start()  # torch.set_num_threads sets the default of threads not started yet, and its caller's own count
    setter.join()
    return torch.get_num_threads()
