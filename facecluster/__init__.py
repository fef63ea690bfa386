"""facecluster: find wrong labels, outliers, near-duplicates and split identities in face
recognition training sets from their embeddings, and write a cleaned manifest."""

__version__ = "0.1.0"

from .device import Device, resolve_device
from .errors import InputError
from .faceset import FaceSet, load_faceset, read_embeddings, read_manifest
from .findings import (
                       Findings,
                       LabelAgreement,
                       NearDuplicates,
                       Signals,
                       calibrate_same_identity,
                       compute_signals,
                       find_issues,
                       find_near_duplicates,
                       knn_label_agreement,
)
from .hierarchical import FINCH, Dendrogram, GraphAverageLinkage, average_linkage, finch
from .knn import KnnGraph, build_knn_graph
from .pipeline import (
                       CleanConfig,
                       CleanResult,
                       ClusterConfig,
                       ClusterResult,
                       clean,
                       cluster,
)
from .relabel import POLICIES, Policy, cleaned_manifest, decide_actions, write_outputs

__all__ = [
    "__version__", "InputError", "FaceSet", "load_faceset", "read_embeddings", "read_manifest", "Device",
    "resolve_device", "KnnGraph", "build_knn_graph", "Findings", "LabelAgreement", "NearDuplicates", "Signals",
    "calibrate_same_identity", "compute_signals", "find_issues", "find_near_duplicates", "knn_label_agreement",
    "POLICIES", "Policy", "cleaned_manifest", "decide_actions", "write_outputs", "CleanConfig", "CleanResult", "clean",
    "ClusterConfig", "ClusterResult", "cluster", "FINCH", "Dendrogram", "GraphAverageLinkage", "average_linkage", "finch",
]
