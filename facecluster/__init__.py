"""facecluster: find wrong labels, outliers, near-duplicates and split identities in face
recognition training sets from their embeddings, and write a cleaned manifest.

``import facecluster`` loads nothing heavy: each public name is imported from its module the
first time it is used (PEP 562), so a command that fails on its options, or a pipeline that
only needs the loader, does not pay for scikit-learn, SciPy's statistics, numba or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "calibration": ("Calibration", "fit_calibration"),
    "camsoftmax": ("CamSoftmaxConfig", "camsoftmax_confidence"),
    "correlation": ("CorrelationClustering", "CorrelationConfig", "correlation_stage"),
    "device": ("Device", "resolve_device"),
    "errors": ("InputError",),
    "faceset": ("FaceSet", "load_faceset", "read_embeddings", "read_manifest"),
    "findings": ("Findings", "FindingsConfig", "Signals", "find_duplicate_identities", "find_issues",
                 "find_mislabeled", "find_near_duplicates", "find_outliers", "find_review"),
    "hierarchical": ("FINCH", "Dendrogram", "GraphAverageLinkage", "HierarchicalConfig", "average_linkage", "finch",
                     "hierarchical_stage"),
    "knn": ("KnnGraph", "build_knn_graph", "graph_from_vectors"),
    "outputs": ("verify_outputs",),
    "partition": ("Partition",),
    "pipeline": ("CleanConfig", "CleanResult", "ClusterConfig", "ClusterResult", "clean", "cluster",
                 "compute_signals"),
    "relabel": ("POLICIES", "Decisions", "Policy", "apply_decisions", "cleaned_manifest", "decide_actions",
                "read_decisions", "write_outputs"),
    "review": ("render_review", "review_queue"),
    "votes": ("LabelAgreement", "NearDuplicates", "knn_label_agreement", "near_duplicate_groups", "vote_stage"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["__version__", *_WHERE]


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'facecluster' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what static tools and IDEs see
    from .calibration import Calibration, fit_calibration  # noqa: F401
    from .camsoftmax import CamSoftmaxConfig, camsoftmax_confidence  # noqa: F401
    from .correlation import CorrelationClustering, CorrelationConfig, correlation_stage  # noqa: F401
    from .device import Device, resolve_device  # noqa: F401
    from .errors import InputError  # noqa: F401
    from .faceset import FaceSet, load_faceset, read_embeddings, read_manifest  # noqa: F401
    from .findings import (  # noqa: F401
        Findings,
        FindingsConfig,
        Signals,
        find_duplicate_identities,
        find_issues,
        find_mislabeled,
        find_near_duplicates,
        find_outliers,
        find_review,
    )
    from .hierarchical import (  # noqa: F401
        FINCH,
        Dendrogram,
        GraphAverageLinkage,
        HierarchicalConfig,
        average_linkage,
        finch,
        hierarchical_stage,
    )
    from .knn import KnnGraph, build_knn_graph, graph_from_vectors  # noqa: F401
    from .outputs import verify_outputs  # noqa: F401
    from .partition import Partition  # noqa: F401
    from .pipeline import (  # noqa: F401
        CleanConfig,
        CleanResult,
        ClusterConfig,
        ClusterResult,
        clean,
        cluster,
        compute_signals,
    )
    from .relabel import (  # noqa: F401
        POLICIES,
        Decisions,
        Policy,
        apply_decisions,
        cleaned_manifest,
        decide_actions,
        read_decisions,
        write_outputs,
    )
    from .review import render_review, review_queue  # noqa: F401
    from .votes import (  # noqa: F401
        LabelAgreement,
        NearDuplicates,
        knn_label_agreement,
        near_duplicate_groups,
        vote_stage,
    )
