"""facecluster: find wrong labels, outliers, near-duplicates and split identities in face
recognition training sets from their embeddings, and write a cleaned manifest."""

__version__ = "0.1.0"

from .calibration import Calibration, fit_calibration
from .camsoftmax import CamSoftmaxConfig, camsoftmax_confidence
from .correlation import CorrelationClustering, CorrelationConfig, correlation_stage
from .device import Device, resolve_device
from .errors import InputError
from .faceset import FaceSet, load_faceset, read_embeddings, read_manifest
from .findings import (
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
from .hierarchical import (
    FINCH,
    Dendrogram,
    GraphAverageLinkage,
    HierarchicalConfig,
    average_linkage,
    finch,
    hierarchical_stage,
)
from .knn import KnnGraph, build_knn_graph, graph_from_vectors
from .partition import Partition
from .pipeline import (
    CleanConfig,
    CleanResult,
    ClusterConfig,
    ClusterResult,
    clean,
    cluster,
    compute_signals,
)
from .relabel import POLICIES, Policy, cleaned_manifest, decide_actions, write_outputs
from .votes import (
    LabelAgreement,
    NearDuplicates,
    knn_label_agreement,
    near_duplicate_groups,
    vote_stage,
)

__all__ = [
    "__version__", "InputError", "FaceSet", "load_faceset", "read_embeddings", "read_manifest", "Device",
    "resolve_device", "KnnGraph", "build_knn_graph", "graph_from_vectors", "Calibration", "fit_calibration",
    "LabelAgreement", "NearDuplicates", "knn_label_agreement", "near_duplicate_groups", "vote_stage",
    "Partition", "HierarchicalConfig", "hierarchical_stage", "FINCH", "Dendrogram", "GraphAverageLinkage",
    "average_linkage", "finch", "CorrelationClustering", "CorrelationConfig", "correlation_stage",
    "CamSoftmaxConfig", "camsoftmax_confidence", "Signals", "Findings", "FindingsConfig", "find_mislabeled",
    "find_outliers", "find_near_duplicates", "find_duplicate_identities", "find_review", "find_issues",
    "compute_signals", "POLICIES", "Policy", "cleaned_manifest", "decide_actions", "write_outputs",
    "CleanConfig", "CleanResult", "clean", "ClusterConfig", "ClusterResult", "cluster",
]
