"""One function over blocks of rows, here or on a Dask cluster, with the same result either way.

The O(N·k) work of the stages (the kNN votes, the near-duplicate laws' per-edge cuts,
cam-softmax's held-out scoring) is row-local: a block of rows needs its own rows of the graph
and, at most, a few arrays read by every block (the labels, a calibration, the heads). So the
stages cut their rows into blocks and map one function over them: in this process without a
client, or as one task a block on the workers of a ``dask.distributed.Client``, the shared
arrays sent once to each worker. The function is the same in both cases, so are the results;
the steps that need the whole graph at once (connected components, label pairs, the laws'
fits) stay with the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

BLOCK_ROWS = 65_536


def row_blocks(n: int, block_rows: int | None = None) -> list[tuple[int, int]]:
    """[start, stop) of each block of ``block_rows`` rows (default :data:`BLOCK_ROWS`)."""
    step = max(1, int(block_rows or BLOCK_ROWS))
    return [(lo, min(lo + step, n)) for lo in range(0, n, step)]


def map_row_blocks(fn: Callable, n: int, per_row: Sequence[np.ndarray], shared: Sequence = (), *,
                   client=None, block_rows: int | None = None, advance: Callable[[int], None] | None = None,
                   consume: Callable[[int, int, object], None] | None = None) -> list | None:
    """``fn(*blocks of per_row, *shared)`` for every block of the ``n`` rows, in block order.

    ``per_row`` arrays (first axis n) are sliced here and sent with their block's task;
    ``shared`` objects are passed whole (on a cluster, arrays are scattered once to every
    worker, anything else is sent with each task). With ``client`` None the blocks run here
    one after the other. ``advance(1)`` is called as each block finishes. Returns the blocks'
    results in order; with ``consume``, each result is handed to ``consume(start, stop,
    result)`` as it arrives instead (to fill a preallocated array without holding every
    block's result at once) and None is returned.
    """
    bounds = row_blocks(n, block_rows)
    out: list = [None] * len(bounds)

    def take(i, result):
        if consume is not None:
            consume(*bounds[i], result)
        else:
            out[i] = result
        if advance is not None:
            advance(1)

    if client is None:
        for i, (lo, hi) in enumerate(bounds):
            take(i, fn(*(a[lo:hi] for a in per_row), *shared))
        return None if consume is not None else out
    from dask.distributed import as_completed

    # arrays are sent once to every worker; small objects (a calibration, a scale) ride along
    sent = [client.scatter(s, broadcast=True, hash=False) if isinstance(s, np.ndarray) else s for s in shared]
    futures = []
    for lo, hi in bounds:  # each block's rows go to the cluster as data, not inside its task
        rows = client.scatter([np.ascontiguousarray(a[lo:hi]) for a in per_row], hash=False)
        futures.append(client.submit(fn, *rows, *sent, pure=False))
    place = {f.key: i for i, f in enumerate(futures)}
    for future in as_completed(futures):
        take(place[future.key], future.result())
        future.release()
    return None if consume is not None else out
