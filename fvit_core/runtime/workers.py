"""Runtime strategy: CPU worker threads for forward batches and for batch-1 work.

On a CPU the forward batches of the sample loop go to ``torch.get_num_threads()`` worker threads
that each run one batch with one intra-op thread (torch.set_num_threads is per thread with
OpenMP, so the caller's setting is untouched). Batches are independent, so workers never wait for
each other inside an operator; with intra-op threads every operator of a forward pass ends in a
barrier that stalls whenever another process holds a core (docs/PERFORMANCE.md measures both).
Work is submitted and collected in order, so the numbers do not depend on the workers.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

_POOLS: dict[tuple[str, int], ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def worker_pool(workers: int, name: str = "fvit-smooth") -> ThreadPoolExecutor:
    """A process-wide pool of ``workers`` threads with one intra-op thread each (shared by
    concurrent callers; created once)."""
    with _POOLS_LOCK:
        pool = _POOLS.get((name, workers))
        if pool is None:
            pool = _POOLS[(name, workers)] = _start_pool(workers, name)
        return pool


def _start_pool(workers: int, name: str) -> ThreadPoolExecutor:
    # torch.set_num_threads(1) in a worker sets that thread's OpenMP/MKL thread count, and also
    # the default that threads initialised later take; the default is restored once every worker
    # has set its own count (the barrier makes the pool start all of its threads now).
    before = torch.get_num_threads()
    ready = threading.Barrier(workers + 1)

    def init() -> None:
        torch.get_num_threads()  # the per-thread lazy init first, or it would later undo the next line
        torch.set_num_threads(1)
        ready.wait()

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
    started = [pool.submit(init) for _ in range(workers)]
    ready.wait()
    for future in started:
        future.result()
    torch.set_num_threads(before)
    return pool


def submit_single_threaded(fn: Callable[..., T], *args, **kwargs) -> "Future[T]":
    """Start ``fn(*args, **kwargs)`` on a CPU worker thread with one intra-op thread.

    For batch-1 work (an attack on one image): too small to gain from intra-op threads, and with
    them every operator waits at a barrier for a thread that another process may have
    descheduled. One worker for the process: such calls run one at a time. ``fn`` must not
    itself wait for this worker.
    """
    return worker_pool(1, "fvit-serial").submit(fn, *args, **kwargs)


def map_in_order(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``fn(item)`` for every item, in order; with ``workers`` > 1 on the worker pool, at most
    2 * workers items in flight (bounded memory)."""
    if workers <= 1:
        yield from map(fn, items)
        return
    pool, window = worker_pool(workers), deque()
    for item in items:
        window.append(pool.submit(fn, item))
        if len(window) >= 2 * workers:
            yield window.popleft().result()
    while window:
        yield window.popleft().result()
