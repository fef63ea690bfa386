"""The one place that decides where heavy work runs (CPU, faiss-gpu, torch CUDA) and how big
its chunks are. Callers ask; nothing else in the package probes for GPUs."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class Device:
    """Resolved compute device.

    kind : "cpu" or "cuda"
    backend : "faiss-cpu", "faiss-gpu" or "torch-cuda" (who runs kNN search)
    reason : why this device was chosen (for the report)
    """

    kind: str
    backend: str
    reason: str


@lru_cache(maxsize=1)
def faiss_gpu_count() -> int:
    try:
        import faiss

        return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    except Exception:  # a broken GPU install must not stop CPU work
        return 0


def _nvidia_present() -> bool:
    """Cheap check for an NVIDIA driver, so a CPU-only machine never pays torch's import."""
    import os
    import shutil

    return os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi") is not None


@lru_cache(maxsize=1)
def torch_cuda_available() -> bool:
    if not _nvidia_present():
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def resolve_device(requested: str = "auto") -> Device:
    """Map ``auto|cpu|cuda`` to a concrete device.

    ``auto`` takes faiss-gpu when it sees a GPU, else torch CUDA, else the CPU. ``cuda`` asks
    for a GPU and falls back to the CPU with the reason recorded (never an error), so a job
    written for a GPU box still runs on a laptop.
    """
    requested = requested.lower()
    if requested not in {"auto", "cpu", "cuda"}:
        raise ValueError(f"device must be auto, cpu or cuda, got {requested!r}")
    if requested == "cpu":
        return Device("cpu", "faiss-cpu", "requested cpu")
    if faiss_gpu_count() > 0:
        return Device("cuda", "faiss-gpu", f"faiss sees {faiss_gpu_count()} GPU(s)")
    if torch_cuda_available():
        return Device("cuda", "torch-cuda", "faiss-gpu not installed; torch CUDA available")
    why = "no GPU found (faiss-gpu absent or sees none; torch CUDA unavailable)"
    return Device("cpu", "faiss-cpu", why if requested == "auto" else f"cuda requested but {why}; using cpu")


def query_chunk_rows(n_features: int, k: int, budget_bytes: int = 64 << 20) -> int:
    """Rows per kNN query chunk so one chunk's scratch (queries + k results) stays in budget."""
    per_row = 4 * (n_features + 2 * k) + 8 * k
    return int(max(1024, min(1 << 17, budget_bytes // max(per_row, 1))))
