"""What a cleaning run holds in memory, estimated before it starts, and the budget it keeps.

``clean`` holds one float32 copy of the unit embeddings (the input file itself is memory-mapped
and read in blocks, never copied whole), the kNN graph (int32 neighbours + float32
similarities), the IVF codes when the search is approximate, the manifest as a table, and the
stages' per-edge working arrays (symmetric CSR copies of the graph, edge weights, partitions).
Nothing is O(N · identities). :func:`estimate_clean_memory` adds these up from the set's shape
before any of it is allocated; a run given a budget (``memory_budget`` / ``--memory-budget``)
that the estimate exceeds is refused up front, with the parts named, and nothing is written.

The per-edge and per-row constants were measured as the peak resident memory of
``facecluster clean`` runs from files (`bench/memory_model.py`) and are kept on the high side
of those measurements.
"""

from __future__ import annotations

import re
import resource
import sys
from dataclasses import dataclass

from .errors import InputError

GIB = 2**30
# Peak working memory of the stages, per directed kNN edge (N·k), above the embeddings,
# the graph and the manifest: set so the estimate covers the measured 1M run (6.59 GB peak).
STAGE_BYTES_PER_EDGE = 112
# The manifest as a pandas table with the audit's columns: ~250 bytes a row for paths of
# ~40 characters (measured), the outputs' text built chunk by chunk.
TABLE_BYTES_PER_ROW = 400
# The interpreter with numpy, scipy, scikit-learn, pandas, FAISS and numba loaded, and the
# stages' fixed working set: 400 MiB until a review measured reruns of 5k-50k-row sets
# 60-90 MiB over the estimate (2026-12-05); the first run after an install also compiles
# the numba kernels into their cache, about 150 MiB more, once.
BASE_BYTES = 512 * 2**20

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
          "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}


def parse_size(text: str | int | float) -> int:
    """Bytes from ``"6G"``, ``"6GiB"``, ``"6GB"`` (10⁹), ``"512M"`` or a plain number of bytes;
    the bare letters K, M, G, T are binary (as ``free -g`` and ``ulimit`` count)."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
        if not match or match.group(2).lower() not in _UNITS:
            raise ValueError(f"a memory size such as 6G, 6GiB, 6GB or 512M, got {text!r}")
        value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if value <= 0:
        raise ValueError(f"a memory size must be positive, got {text!r}")
    return int(value)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run will hold at its peak, by part."""

    parts: dict

    @property
    def total(self) -> int:
        return int(sum(self.parts.values()))

    def summary(self) -> str:
        shown = ", ".join(f"{name.replace('_', ' ')} {value / GIB:.2f}" for name, value in self.parts.items() if value >= 0.005 * GIB)
        return f"about {self.total / GIB:.3f} GiB ({shown} GiB)"

    def as_dict(self) -> dict:
        return {"total_bytes": self.total, **{f"{name}_bytes": int(v) for name, v in self.parts.items()}}


def estimate_clean_memory(n_samples: int, dim: int, k: int, *, knn_method: str = "exact",
                          stages: tuple[str, ...] = ("hierarchical", "correlation", "camsoftmax")) -> MemoryEstimate:
    """Peak memory of ``clean`` on ``n_samples`` × ``dim`` embeddings with ``k`` neighbours.

    ``knn_method`` is the resolved search ("exact", "ivf" or "hnsw"); the stages listed add
    their per-edge working arrays (the kNN-vote stage and the findings always run).
    """
    k = max(1, min(int(k), n_samples - 1))
    edges = n_samples * k
    parts = {
        "embeddings": n_samples * dim * 4,
        "knn_graph": edges * 8,
        "manifest_and_audit": n_samples * TABLE_BYTES_PER_ROW,
        "stages": int(edges * STAGE_BYTES_PER_EDGE * (0.5 + 0.5 * len(stages) / 3)),
        "runtime": BASE_BYTES,
    }
    if knn_method == "ivf":
        from .knn import pq_subquantizers

        parts["ivf_codes"] = n_samples * (pq_subquantizers(dim) // 2 + 8)
    elif knn_method == "hnsw":
        parts["hnsw_index"] = n_samples * (dim * 4 + 32 * 2 * 4 + 16)
    return MemoryEstimate(parts)


def check_memory_budget(estimate: MemoryEstimate, budget: int | None, source: str) -> None:
    """Refuse a run whose estimate exceeds ``budget`` bytes (None: no budget), naming the
    parts, before anything is allocated or written."""
    if budget is None or estimate.total <= budget:
        return
    raise InputError(source, f"this run needs {estimate.summary()}, over the memory budget of "
                             f"{budget / GIB:.3f} GiB; raise --memory-budget, or run fewer stages (--stages) "
                             f"or a smaller k")


def peak_rss_bytes() -> int | None:
    """This process's peak resident memory so far (Linux and macOS), for the report."""
    try:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (AttributeError, OSError):
        return None
    return int(peak if sys.platform == "darwin" else peak * 1024)
