"""``clean``: manifest + embeddings in, findings, actions and the output files out.

The one function the CLI's ``facecluster clean`` and a data-curation pipeline both call.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .calibration import Calibration, fit_calibration
from .camsoftmax import CamSoftmaxConfig
from .correlation import CorrelationConfig, correlation_stage
from .device import Device, resolve_device
from .errors import InputError, is_centre, is_real, is_whole
from .faceset import FaceSet, load_faceset
from .findings import Findings, FindingsConfig, Signals, find_issues
from .hierarchical import HierarchicalConfig, hierarchical_stage
from .knn import EXACT_MAX, KnnGraph, build_knn_graph, check_graph
from .progress import NullProgress, Progress
from .relabel import (
    AUDIT_COLUMNS,
    OUTPUT_FILES,
    Decisions,
    action_counts,
    apply_decisions,
    check_decisions,
    check_output_dir,
    cleaned_manifest,
    decide_actions,
    get_policy,
    read_decisions,
    write_outputs,
)
from .review import review_queue
from .votes import vote_stage

CLEAN_STAGES = ("hierarchical", "correlation", "camsoftmax")
GRAPH_FILE = "knn_graph.npz"
# the random streams of a run, one per consumer, all spawned from the one seed
_STREAMS = ("calibration", "hierarchical", "correlation", "camsoftmax")


@dataclass(frozen=True)
class CleanConfig:
    """Settings of one cleaning run.

    k : neighbours per sample in the kNN graph
    device : "auto", "cpu" or "cuda" (falls back to the CPU when no GPU can be used);
        resolved once per run and handed to the kNN search and the cam-softmax stage
    knn_method : "auto", "exact", "ivf" or "hnsw"
    exact_max : largest set searched exactly on the CPU under ``knn_method="auto"``
    knn_recall : recall of the edges that matter the approximate graph is built to (on sampled
        queries; :func:`facecluster.knn.build_knn_graph`'s ``target_recall``). At 0.999 the
        cleaning figures at 100k rows are within 0.002 of the exact graph's (but one merge
        suggestion of 70)
    centre : "auto" (decided from the data), True or False
    policy : "conservative", "balanced" or "aggressive" (see :mod:`facecluster.relabel`)
    path_col, label_col : manifest column names
    seed : every random choice derives from it: one numpy Generator per stage, spawned once
        per run (``np.random.SeedSequence(seed).spawn``), handed down
    stages : the stages that add evidence to the kNN votes, any of "hierarchical",
        "correlation" and "camsoftmax" (the kNN-vote stage always runs)
    hierarchical, correlation, camsoftmax, findings : each stage's own settings
        (:class:`~facecluster.hierarchical.HierarchicalConfig`,
        :class:`~facecluster.correlation.CorrelationConfig`,
        :class:`~facecluster.camsoftmax.CamSoftmaxConfig`,
        :class:`~facecluster.findings.FindingsConfig`); None = defaults
    memory_budget : bytes the run may hold at its peak (None: no limit). A run whose estimate
        (:func:`facecluster.memory.estimate_clean_memory`, from the set's shape) exceeds it is
        refused before the embeddings are read (a .npy or Parquet file, or an array; .npz right
        after loading), with the parts named (an InputError)
    """

    k: int = 30
    device: str = "auto"
    knn_method: str = "auto"
    exact_max: int = EXACT_MAX
    knn_recall: float = 0.999
    centre: str | bool = "auto"
    policy: str = "conservative"
    path_col: str = "path"
    label_col: str = "label"
    seed: int = 0
    stages: tuple[str, ...] = CLEAN_STAGES
    hierarchical: HierarchicalConfig | None = None
    correlation: CorrelationConfig | None = None
    camsoftmax: CamSoftmaxConfig | None = None
    findings: FindingsConfig | None = None
    memory_budget: int | None = None

    def __post_init__(self):
        _check_common(self)
        if not isinstance(self.label_col, str) or not self.label_col:
            raise ValueError(f"label_col must name the manifest's label column (clean needs labels; faces without "
                             f"labels are grouped by cluster / facecluster cluster), got {self.label_col!r}")
        if isinstance(self.stages, str):  # tuple("camsoftmax") would be its letters
            object.__setattr__(self, "stages", (self.stages,))
        object.__setattr__(self, "stages", tuple(self.stages))
        unknown = sorted(set(self.stages) - set(CLEAN_STAGES))
        if unknown:
            raise ValueError(f"stages must be among {', '.join(CLEAN_STAGES)}, got {', '.join(unknown)}")
        get_policy(self.policy)
        if self.device not in {"auto", "cpu", "cuda"}:
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.knn_method not in {"auto", "exact", "ivf", "hnsw"}:
            raise ValueError(f"knn_method must be auto, exact, ivf or hnsw, got {self.knn_method!r}")
        if not 0.0 < self.knn_recall <= 1.0:
            raise ValueError(f"knn_recall must be in (0, 1], got {self.knn_recall!r}")
        if isinstance(self.memory_budget, str):  # the CLI's syntax: 6G, 6GiB, 6GB
            from .memory import parse_size

            object.__setattr__(self, "memory_budget", parse_size(self.memory_budget))
        if self.memory_budget is not None and not (is_real(self.memory_budget) and np.isfinite(self.memory_budget)):
            raise ValueError(f"memory_budget must be a number of bytes or a size such as '6G', got {self.memory_budget!r}")
        if self.memory_budget is not None and self.memory_budget <= 0:
            raise ValueError(f"memory_budget must be a positive number of bytes, got {self.memory_budget!r}")
        for name, kind in (("hierarchical", HierarchicalConfig), ("correlation", CorrelationConfig),
                           ("camsoftmax", CamSoftmaxConfig), ("findings", FindingsConfig)):
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, kind())
            elif not isinstance(value, kind):
                raise ValueError(f"{name} must be a {kind.__name__}, got {type(value).__name__}")


def _check_common(config) -> None:
    """The settings ``clean`` and ``cluster`` share: refused here, before any work, rather
    than taken silently (bool("no") centres, 2.5 neighbours become 2, no seed is no rerun)."""
    if not is_whole(config.k) or config.k < 1:
        raise ValueError(f"k must be a whole number of at least 1, got {config.k!r}")
    if not is_whole(config.seed) or config.seed < 0:
        raise ValueError(f"seed must be a whole number of at least 0 (a run is reproducible from it), got {config.seed!r}")
    if not is_centre(config.centre):
        raise ValueError(f"centre must be True, False or 'auto', got {config.centre!r}")


def stage_generators(seed: int) -> dict[str, np.random.Generator]:
    """One independent numpy Generator per random consumer of a run, from the run's seed."""
    children = np.random.SeedSequence(seed).spawn(len(_STREAMS))
    return {name: np.random.default_rng(child) for name, child in zip(_STREAMS, children)}


@dataclass
class CleanResult:
    """Everything a run produced; ``write(out_dir)`` puts the output files on disk."""

    faceset: FaceSet
    graph: KnnGraph
    signals: Signals
    findings: Findings
    audit: pd.DataFrame
    cleaned: pd.DataFrame
    identities: pd.DataFrame
    report: dict = field(default_factory=dict)

    def write(self, out_dir: str | Path, image_root: str | Path | None = None) -> list[Path]:
        """Write cleaned.csv, audit.csv, identities.csv, report.json, report.html, review.html
        and the kNN graph cache, all staged and moved into place together. ``image_root``: the
        folder the pages' images may come from (default: the manifest's folder)."""
        from .report import render_html
        from .review import render_review

        inputs = list(self.faceset.source.values()) + [self.report.get("decisions", {}).get("file")]
        check_output_dir(out_dir, [p for p in inputs if p], OUTPUT_FILES + (GRAPH_FILE,))
        pages = {"report.html": render_html(self, image_root=image_root),
                 "review.html": render_review(self, out_dir, image_root=image_root)}
        return write_outputs(out_dir, {"cleaned.csv": self.cleaned, "audit.csv": self.audit,
                                       "identities.csv": self.identities}, self.report, pages, _graph_writer(self.graph),
                             keep=(GRAPH_FILE,))

    def summary(self) -> dict:
        """Counts for a short printed summary."""
        return {"rows": self.faceset.n_samples, "identities": self.faceset.n_labels,
                "issues": self.report["counts"]["issues"], "actions": self.report["counts"]["actions"],
                "rows_kept": int(len(self.cleaned)), "seconds": self.report["timings"]["total"],
                "review_queue": self.report["counts"]["review_queue"],
                "decided_by_person": self.report["counts"]["decided_by_person"],
                "decisions": self.report.get("decisions")}


def _graph_writer(graph: KnnGraph) -> dict:
    """The graph cache as one more staged output (nothing to write when it was loaded from there)."""
    if graph.info.get("cache") == "hit":
        return {}
    return {GRAPH_FILE: graph.save}


def _versions() -> dict:
    import faiss
    import scipy
    import sklearn

    return {"facecluster": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "scipy": scipy.__version__, "scikit-learn": sklearn.__version__, "pandas": pd.__version__,
            "faiss": getattr(faiss, "__version__", "unknown")}


def _resolved_knn_method(config: CleanConfig, device: Device, n_samples: int) -> str:
    """The search :func:`build_knn_graph` will run under ``config`` (before any IVF fallback)."""
    if config.knn_method != "auto":
        return config.knn_method
    return "exact" if (device.kind == "cuda" or n_samples <= config.exact_max) else "ivf"


def _embeddings_shape(manifest, embeddings) -> tuple[int, int] | None:
    """The embeddings' shape when it can be had without reading them (an array, a .npy
    header); None otherwise (the budget is then checked right after loading)."""
    if isinstance(embeddings, np.ndarray):
        return embeddings.shape if embeddings.ndim == 2 else None
    if embeddings is None and isinstance(manifest, (str, Path)):
        from .faceset import default_embeddings_path

        embeddings = default_embeddings_path(manifest)
    if isinstance(embeddings, (str, Path)) and str(embeddings).lower().endswith(".npy"):
        try:
            array = np.load(embeddings, mmap_mode="r", allow_pickle=False)
        except Exception:  # load_faceset names the problem
            return None
        return array.shape if array.ndim == 2 else None
    if isinstance(embeddings, (str, Path)) and str(embeddings).lower().endswith((".parquet", ".pq")):
        return _parquet_shape(Path(embeddings))
    return None


def _parquet_shape(path: Path) -> tuple[int, int] | None:
    """A Parquet embeddings file's shape from its footer (and, for a column of lists, the
    first list): reading it whole takes the table, a pandas copy and the stacked matrix at
    once, more than the run's estimate. None where the footer cannot tell."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        file = pq.ParquetFile(path)
        n, schema = file.metadata.num_rows, file.schema_arrow
        types = [field.type for field in schema]
        if len(types) == 1 and pa.types.is_fixed_size_list(types[0]):
            return n, int(types[0].list_size)
        if len(types) == 1 and (pa.types.is_list(types[0]) or pa.types.is_large_list(types[0])):
            if not file.metadata.num_row_groups:
                return None
            first = file.read_row_group(0, columns=[schema[0].name]).column(0)
            return (n, len(first[0])) if len(first) and first[0].is_valid else None
        if types and all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in types):
            return n, len(types)
    except Exception:  # load_faceset names the problem
        return None
    return None


def _check_budget(config: CleanConfig, device: Device, n_samples: int, dim: int, source: str) -> None:
    if getattr(config, "memory_budget", None) is None or n_samples < 2:  # `cluster` has no budget
        return
    from .memory import check_memory_budget, estimate_clean_memory

    estimate = estimate_clean_memory(n_samples, dim, config.k, knn_method=_resolved_knn_method(config, device, n_samples),
                                     stages=config.stages)
    check_memory_budget(estimate, config.memory_budget, source)


def _load_and_graph(manifest, embeddings, config, out_dir, output_names, device: Device, progress: Progress,
                    timings: dict, client=None, peaks: dict | None = None,
                    output_columns: tuple = (), check=None) -> tuple[FaceSet, KnnGraph]:
    """The first two boxes of every flow: validated FaceSet, then its (cached) kNN graph.
    ``output_columns``: the columns the flow adds to the manifest's; a manifest column of
    the same name is refused (it would be overwritten, then lost). ``check``: called with
    the FaceSet before the graph, for input only the manifest can judge (decisions)."""
    t = time.perf_counter()
    if out_dir is not None:  # a table or an array in memory cannot be overwritten: only files are inputs here
        check_output_dir(out_dir, [x for x in (manifest, embeddings) if isinstance(x, (str, Path))], output_names)
    shape = _embeddings_shape(manifest, embeddings)
    if shape is not None:  # refused before anything big is read
        _check_budget(config, device, *shape, source=_source_name(embeddings if embeddings is not None else manifest))
    with progress.task("load and validate", total=None):
        faceset = load_faceset(manifest, embeddings, path_col=config.path_col, label_col=config.label_col,
                               centre=config.centre, seed=config.seed)
        if shape is None:  # inside the task: a refusal here is the load's, and leaves no finished bar
            _check_budget(config, device, faceset.n_samples, faceset.dim, source=str(faceset.source.get("embeddings")))
    if faceset.n_samples < 2:
        raise InputError(faceset.source["manifest"], f"{faceset.n_samples} row: at least 2 faces are needed "
                                                     "to compare one with another")
    for column in output_columns:
        if column in faceset.manifest.columns:
            raise InputError(faceset.source["manifest"], f"the column {column!r} is one facecluster writes: the "
                             "output would overwrite it and the input's values would be lost; rename or drop it "
                             "(a previous run's audit.csv? its cleaned.csv is the manifest to run on)", column=column)
    if check is not None:
        check(faceset)
    timings["load"] = time.perf_counter() - t
    _mark_peak(peaks, "load")
    t = time.perf_counter()
    cache = None if out_dir is None else Path(out_dir) / GRAPH_FILE
    graph = build_knn_graph(faceset.embeddings, k=config.k, device=device, method=config.knn_method,
                            exact_max=config.exact_max, target_recall=getattr(config, "knn_recall", 0.999),
                            cache=cache, seed=config.seed, progress=progress, dask=client,
                            scratch=None if out_dir is None else Path(out_dir))
    timings["knn"] = time.perf_counter() - t
    _mark_peak(peaks, "knn")
    return faceset, graph


def _source_name(x) -> str:
    """How an error names an input: its path, or what it is when it was given in memory."""
    if isinstance(x, (str, Path)):
        return str(x)
    return "<manifest>" if isinstance(x, pd.DataFrame) else "<embeddings>"


def _mark_peak(peaks: dict | None, stage: str) -> None:
    """The process's peak resident memory at the end of ``stage`` (a high-water mark: the
    first stage whose mark reaches the run's peak is the one that set it)."""
    if peaks is not None:
        from .memory import peak_rss_bytes

        peaks[stage] = peak_rss_bytes()


def compute_signals(graph: KnnGraph, labels: np.ndarray, n_labels: int | None = None,
                    config: CleanConfig | None = None, *, embeddings: np.ndarray | None = None,
                    device: Device | None = None, progress: Progress | None = None,
                    timings: dict | None = None, client=None, peaks: dict | None = None) -> Signals:
    """Run the stages side by side on one graph: the shared calibration (fitted once), the
    kNN-vote stage, and those of ``config.stages`` that ran (cam-softmax needs ``embeddings``).

    Parameters
    ----------
    graph : KnnGraph
    labels : (n_samples,) int64 label codes; n_labels : their count (default max + 1)
    config : CleanConfig (its ``stages``, per-stage settings and ``seed`` are used)
    embeddings : (n_samples, n_features) float32 processed unit vectors (cam-softmax)
    device : the resolved device (default: ``resolve_device(config.device)``)
    progress : one task per stage; timings : filled with seconds per stage when given;
        peaks : filled with the process's peak resident memory (bytes) at the end of each stage
    client : a ``dask.distributed.Client``: the kNN votes, the near-duplicate cuts and
        cam-softmax's scoring run block by block on its workers (same result)

    Returns
    -------
    Signals
    """
    config = config or CleanConfig()
    progress = progress or NullProgress()
    device = device or resolve_device(config.device)
    check_graph(graph)
    labels = np.asarray(labels)
    if labels.shape != (graph.n_samples,) or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be ({graph.n_samples},) integer codes, got {labels.shape} {labels.dtype}")
    labels = labels.astype(np.int64, copy=False)
    n_labels = int(labels.max()) + 1 if n_labels is None else int(n_labels)
    if len(labels) and (labels.min() < 0 or labels.max() >= n_labels):
        # the stages index per-label tables by these codes
        raise ValueError(f"label codes must lie in [0, n_labels={n_labels}), got {labels.min()}..{labels.max()}")
    rngs = stage_generators(config.seed)
    clock: dict[str, float] = {}

    def timed(name: str, fn):
        t = time.perf_counter()
        with progress.task(name.replace("_", " "), total=None):
            out = fn()
        clock[name] = time.perf_counter() - t
        _mark_peak(peaks, name)
        return out

    calibration = timed("calibration", lambda: fit_calibration(graph, labels, rng=rngs["calibration"]))
    duplicates, agreement = timed("knn_votes", lambda: vote_stage(graph, labels, calibration, n_labels=n_labels,
                                                                   client=client))
    hier = corr = conf = None
    if "hierarchical" in config.stages:
        hier = timed("hierarchical", lambda: hierarchical_stage(graph, labels, config.hierarchical,
                                                                calibration=calibration, rng=rngs["hierarchical"]))
    if "correlation" in config.stages:
        corr = timed("correlation", lambda: correlation_stage(graph, labels, config.correlation,
                                                              calibration=calibration, rng=rngs["correlation"],
                                                              keep_graph=False))
    if "camsoftmax" in config.stages and embeddings is not None:
        from .camsoftmax import camsoftmax_confidence

        t = time.perf_counter()  # its own bar, with steps and time left (not a spinner)
        conf = camsoftmax_confidence(embeddings, labels, n_labels, graph.indices, config.camsoftmax, device=device,
                                     seed=rngs["camsoftmax"], progress=progress, client=client)
        clock["camsoftmax"] = time.perf_counter() - t
        _mark_peak(peaks, "camsoftmax")
    if timings is not None:
        timings.update(clock)
    return Signals(calibration=calibration, agreement=agreement, duplicates=duplicates, hierarchical=hier,
                   correlation=corr, camsoftmax=conf)


def clean(
    manifest: str | Path | pd.DataFrame,
    embeddings: str | Path | np.ndarray | None = None,
    config: CleanConfig | None = None,
    *,
    out_dir: str | Path | None = None,
    progress: Progress | None = None,
    image_root: str | Path | None = None,
    decisions: str | Path | Decisions | None = None,
    dask=None,
    **overrides,
) -> CleanResult:
    """Find label problems in a face set and decide what to do about each row.

    Parameters
    ----------
    manifest : CSV/TSV/Parquet path or DataFrame (one row per image, path + label columns)
    embeddings : .npy/.npz/.parquet path, array of shape (n_samples, n_features), or None for
        the manifest's sibling ``<stem>.npy``
    config : :class:`CleanConfig`; keyword ``overrides`` replace single fields (``k=20``)
    out_dir : when given, the outputs are written there (atomically) and the kNN graph is
        cached there for identical re-runs
    progress : a :class:`~facecluster.progress.Progress` (the CLI passes rich bars)
    image_root : folder the manifest's image paths are relative to, for report.html's
        thumbnails and review.html's images; no image outside it is read or linked (default:
        the manifest's folder)
    decisions : a person's decisions (decisions.csv as review.html exports it, or
        :func:`facecluster.relabel.read_decisions`'s value): each beats the algorithm on its
        row (:func:`facecluster.relabel.apply_decisions`); decided rows carry ``fc_source`` =
        ``person``, are counted in report.json and leave the review queue
    dask : a ``dask.distributed.Client``, ``"local:N"`` (a LocalCluster of N worker processes,
        closed at the end) or a scheduler address (``"tcp://host:8786"``): the kNN graph is
        searched on that cluster (:mod:`facecluster.knn_dask`; the workers read a scratch copy
        of the vectors written in ``out_dir``, which must be a folder they can read), the
        stages run here. Exact where the local run is exact (the outputs equal the local
        run's); IVF where it would be IVF, refined here to the same recall target

    Returns
    -------
    CleanResult

    Raises
    ------
    InputError
        Bad input, naming file, row and column. Nothing is written.

    Examples
    --------
    >>> result = clean("faces.csv", "faces.npy", out_dir="out")   # doctest: +SKIP
    >>> result.audit.query("fc_action != 'keep'")                  # doctest: +SKIP
    """
    config = replace(config or CleanConfig(), **overrides)
    progress = progress or NullProgress()
    if decisions is not None and not isinstance(decisions, Decisions):
        decisions = read_decisions(decisions)  # bad input fails here, before any work
    device = resolve_device(config.device)
    timings: dict[str, float] = {}
    peaks: dict[str, int | None] = {}
    t_all = time.perf_counter()
    client, owned = (None, False)
    if dask is not None:
        from .knn_dask import check_spec, close, connect

        if isinstance(dask, str) and check_spec(dask) is None and out_dir is None:
            raise ValueError("a Dask cluster address needs out_dir: its workers read a scratch copy of the vectors there")
        client, owned = connect(dask)
    try:
        faceset, graph = _load_and_graph(manifest, embeddings, config, out_dir, OUTPUT_FILES + (GRAPH_FILE,), device,
                                         progress, timings, client, peaks, output_columns=AUDIT_COLUMNS,
                                         check=None if decisions is None else
                                         (lambda fs: check_decisions(decisions, fs.manifest, fs.path_col, fs.label_col)))
        signals = compute_signals(graph, faceset.labels, faceset.n_labels, config, embeddings=faceset.embeddings,
                                  device=device, progress=progress, timings=timings, client=client, peaks=peaks)
    finally:
        if owned:
            close(client)
    t = time.perf_counter()
    with progress.task("findings", total=None):
        findings = find_issues(signals, faceset.labels, faceset.label_names, config=config.findings,
                               embeddings=faceset.embeddings, graph=graph)
    timings["findings"] = time.perf_counter() - t
    _mark_peak(peaks, "findings")

    t = time.perf_counter()
    with progress.task("decide actions", total=None):
        audit = decide_actions(faceset.manifest, faceset.labels, faceset.label_names, faceset.label_col,
                               findings, config.policy)
        decided = None
        if decisions is not None:
            audit, decided = apply_decisions(audit, decisions, faceset.path_col, faceset.label_col)
        cleaned = cleaned_manifest(audit, faceset.label_col)
    identities = findings.merges.copy()
    timings["relabel"] = time.perf_counter() - t
    _mark_peak(peaks, "relabel")
    timings["total"] = time.perf_counter() - t_all

    report = _clean_report(config, device, faceset, graph, signals, findings, audit, cleaned, timings, out_dir, peaks)
    if decided is not None:
        report["decisions"] = decided
    result = CleanResult(faceset, graph, signals, findings, audit, cleaned, identities, report)
    if out_dir is not None:
        with progress.task("write outputs", total=None):
            result.write(out_dir, image_root=image_root)
    return result


def _memory_report(config, device, faceset, graph, peaks: dict | None = None) -> dict:
    """The up-front estimate beside what the process actually held at its peak, and the peak
    so far at the end of each stage (``peak_rss_bytes_after``: which stage set it)."""
    from .memory import estimate_clean_memory, peak_rss_bytes

    estimate = estimate_clean_memory(faceset.n_samples, faceset.dim, config.k, knn_method=graph.info.get("method", "exact"),
                                     stages=config.stages)
    return {"estimate": estimate.as_dict(), "peak_rss_bytes": peak_rss_bytes(), "budget_bytes": config.memory_budget,
            "peak_rss_bytes_after": peaks or {}}


def _clean_report(config, device, faceset, graph, signals, findings, audit, cleaned, timings, out_dir,
                  peaks: dict | None = None) -> dict:
    """report.json of a cleaning run."""
    queue = review_queue(audit, faceset.label_col, config.policy)
    return {
        "facecluster_version": __version__,
        "versions": _versions(),
        "inputs": dict(faceset.source, rows=faceset.n_samples, identities=faceset.n_labels, dim=faceset.dim,
                       path_col=faceset.path_col, label_col=faceset.label_col),
        "parameters": dict(asdict(config), policy_thresholds=asdict(get_policy(config.policy)),
                           device_resolved=asdict(device)),
        "counts": {"issues": findings.counts(), "actions": action_counts(audit), "rows_kept": int(len(cleaned)),
                   "merge_suggestions": int(len(findings.merges)),
                   "review_queue": int(len(queue)),
                   # what the queue holds by issue: rows a person decided have left it
                   "review_queue_by_issue": {k: int((queue["issue"] == k).sum()) for k in findings.counts()},
                   "decided_by_person": int((audit["fc_source"] == "person").sum())},
        "stages": {
            "embeddings": dict(faceset.centring_stats, centred=faceset.centred),
            "knn": _graph_report(graph, out_dir),
            "calibration": signals.calibration.summary(graph.sims),
            "near_duplicates": signals.duplicates.stats,
            **{name: _named_spread(part.stats, faceset.label_names) for name, part in signals.partitions()},
            "camsoftmax": _confidence_summary(signals.camsoftmax) if signals.camsoftmax is not None else None,
            "findings": {k: v for k, v in findings.stats.items() if k != "near_duplicates"},
        },
        "label_sizes": _size_summary(faceset.label_sizes()),
        "identities": identity_summary(faceset.labels, faceset.label_names, findings),
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "memory": _memory_report(config, device, faceset, graph, peaks),
    }


def _graph_report(graph: KnnGraph, out_dir) -> dict:
    """The graph's build info for report.json; a graph not loaded from the cache is written
    there with the other outputs."""
    info = dict(graph.info)
    if out_dir is not None and info.get("cache") != "hit":
        info["cache"] = "written"
    return info


CLUSTER_FILES = ("clusters.csv", "report.json")
# the columns ``cluster`` adds to the manifest's
CLUSTER_COLUMNS = ("fc_cluster", "fc_cluster_size", "fc_score")


@dataclass(frozen=True)
class ClusterConfig:
    """Settings of one clustering run of (possibly unlabelled) faces.

    method : "correlation" (default: correlation clustering on the calibrated signed graph,
        with the shared-neighbour evidence when unlabelled), "average" (graph average
        linkage) or "finch"
    bias : correlation-clustering bias (log-odds added to every pair; > 0 merges more);
        None = chosen from the labels when given, else 0
    smooth : correlation clustering: value the kNN edges with faces averaged with their
        likely-same neighbours (:class:`facecluster.correlation.CorrelationConfig`); None =
        without labels, for embeddings that had to be centred
    attach : correlation clustering: let rows as far from their clustermates as strangers
        leave (:func:`facecluster.correlation.detach_strays`), then give single-row clusters to
        their nearest cluster where that cluster's faces vouch for them
        (:func:`facecluster.correlation.attach_singletons`); None = without labels
    threshold : average-linkage cut (cosine, in the processed space); None = chosen from the
        labels when ``label_col`` is given, else from the data (two-component mixture)
    level : FINCH level (None = best agreement with the labels when given, else finest)
    label_col : None for unlabelled faces
    """

    method: str = "correlation"
    threshold: float | None = None
    level: int | None = None
    bias: float | None = None
    smooth: bool | None = None
    attach: bool | None = None
    k: int = 30
    device: str = "auto"
    knn_method: str = "auto"
    exact_max: int = EXACT_MAX
    centre: str | bool = "auto"
    path_col: str = "path"
    label_col: str | None = None
    seed: int = 0

    def __post_init__(self):
        if self.method not in {"average", "finch", "correlation"}:
            raise ValueError(f"method must be average, finch or correlation, got {self.method!r}")
        _check_common(self)
        if self.device not in {"auto", "cpu", "cuda"}:
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        for name in ("smooth", "attach"):
            if getattr(self, name) not in (None, True, False):
                raise ValueError(f"{name} must be None, True or False, got {getattr(self, name)!r}")
        owners = {"threshold": "average", "level": "finch", "bias": "correlation", "smooth": "correlation",
                  "attach": "correlation"}
        for name, owner in owners.items():
            if getattr(self, name) is not None and self.method != owner:
                raise ValueError(f"{name} applies to method {owner!r} only, and the method is {self.method!r} "
                                 f"(pass method={owner!r} / --method {owner})")
        self.stage_config()  # validates threshold / level / bias

    def stage_config(self) -> HierarchicalConfig | CorrelationConfig:
        """The stage's own settings for this run."""
        if self.method == "correlation":
            return CorrelationConfig(bias=self.bias, smooth=self.smooth, attach_singletons=self.attach)
        return HierarchicalConfig(method=self.method, threshold=self.threshold, level=self.level)


@dataclass
class ClusterResult:
    """A clustering run: the table (input columns + fc_cluster, fc_cluster_size, fc_score) and report."""

    faceset: FaceSet
    graph: KnnGraph
    labels: np.ndarray
    clusters: pd.DataFrame
    report: dict = field(default_factory=dict)

    def write(self, out_dir: str | Path) -> list[Path]:
        check_output_dir(out_dir, list(self.faceset.source.values()), CLUSTER_FILES + (GRAPH_FILE,))
        return write_outputs(out_dir, {"clusters.csv": self.clusters}, self.report, None, _graph_writer(self.graph),
                             keep=(GRAPH_FILE,))


def cohesion(graph: KnnGraph, labels: np.ndarray) -> np.ndarray:
    """Share of each sample's positive kNN similarity that falls inside its own cluster, in [0, 1]."""
    valid = graph.indices >= 0
    w = np.where(valid, np.clip(graph.sims, 0, None), 0.0).astype(np.float64)
    inside = labels[np.where(valid, graph.indices, 0)] == labels[:, None]
    total = w.sum(axis=1)
    return np.where(total > 0, (w * inside).sum(axis=1) / np.maximum(total, 1e-12), 0.0)


def cluster(
    manifest: str | Path | pd.DataFrame,
    embeddings: str | Path | np.ndarray | None = None,
    config: ClusterConfig | None = None,
    *,
    out_dir: str | Path | None = None,
    progress: Progress | None = None,
    **overrides,
) -> ClusterResult:
    """Cluster faces by identity, with or without labels.

    Returns
    -------
    ClusterResult
        ``clusters`` holds the input columns plus ``fc_cluster`` (id, numbered by first
        appearance), ``fc_cluster_size`` and ``fc_score`` (cohesion: share of the sample's
        positive kNN similarity inside its cluster; 0 for singletons).
    """
    config = replace(config or ClusterConfig(), **overrides)
    progress = progress or NullProgress()
    device = resolve_device(config.device)
    rngs = stage_generators(config.seed)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    faceset, graph = _load_and_graph(manifest, embeddings, config, out_dir, CLUSTER_FILES + (GRAPH_FILE,), device,
                                     progress, timings, output_columns=CLUSTER_COLUMNS)
    t = time.perf_counter()
    labels = faceset.labels if config.label_col is not None else None
    stage_config = config.stage_config()
    calibration: Calibration | None = None
    with progress.task(f"clustering ({config.method})", total=None):
        # the calibration is fitted once, and only where a stage reads it: correlation's edge
        # weights, and average linkage's merge floor and unlabelled cut
        if config.method == "correlation" or (config.method == "average" and config.threshold is None):
            calibration = fit_calibration(graph, labels, rng=rngs["calibration"])
        if config.method == "correlation":
            part = correlation_stage(graph, labels, stage_config, calibration=calibration, rng=rngs["correlation"],
                                     embeddings=faceset.embeddings, centred=faceset.centred, keep_graph=False)
        else:
            part = hierarchical_stage(graph, labels, stage_config, calibration=calibration, rng=rngs["hierarchical"])
    timings["cluster"] = time.perf_counter() - t
    assigned = part.labels
    sizes = np.bincount(assigned)
    table = faceset.manifest.copy()
    table["fc_cluster"] = assigned
    table["fc_cluster_size"] = sizes[assigned]
    table["fc_score"] = np.round(np.where(sizes[assigned] > 1, cohesion(graph, assigned), 0.0), 4)
    timings["total"] = time.perf_counter() - t_all
    stage = dict(part.stats, method=config.method, n_clusters=int(len(sizes)), singletons=int((sizes == 1).sum()),
                 largest=int(sizes.max()))
    stages = {"embeddings": dict(faceset.centring_stats, centred=faceset.centred), "knn": _graph_report(graph, out_dir)}
    if calibration is not None:
        stages["calibration"] = calibration.summary(graph.sims)
    stages["clustering"] = stage
    report = {
        "facecluster_version": __version__,
        "versions": _versions(),
        "inputs": dict(faceset.source, rows=faceset.n_samples, dim=faceset.dim, path_col=faceset.path_col,
                       label_col=faceset.label_col),
        "parameters": dict(asdict(config), device_resolved=asdict(device)),
        "stages": stages,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    result = ClusterResult(faceset, graph, assigned, table, report)
    if out_dir is not None:
        with progress.task("write outputs", total=None):
            result.write(out_dir)
    return result


def identity_summary(labels: np.ndarray, label_names: np.ndarray, findings: Findings) -> dict:
    """Per identity, column-wise (compact at a million identities): its images, how many carry
    each issue and how many wait for review, and purity, the share of its images with no
    problem found (rows waiting for review count as clean)."""
    from .findings import ISSUES, REVIEW

    n_labels = len(label_names)
    images = np.bincount(labels, minlength=n_labels)
    out = {"label": [str(x) for x in label_names], "images": images.tolist()}
    flagged = np.zeros(n_labels, dtype=np.int64)
    for name in ISSUES:
        rows = findings.issue == name
        out[name] = np.bincount(labels[rows], minlength=n_labels).tolist()
        flagged += np.asarray(out[name])
    out[REVIEW] = np.bincount(labels[findings.issue == REVIEW], minlength=n_labels).tolist()
    out["purity"] = np.round(1.0 - flagged / np.maximum(images, 1), 4).tolist()
    merged = dict(zip(findings.merges.label, findings.merges.merged_into)) if len(findings.merges) else {}
    out["merge_into"] = [merged.get(str(x), "") for x in label_names]
    return out


def _confidence_summary(conf) -> dict:
    ok = np.isfinite(conf.p_given)
    quantiles = np.quantile(conf.p_given[ok], [0.01, 0.05, 0.25, 0.5]).round(4).tolist() if ok.any() else []
    return dict(conf.stats, p_given_quantiles={"q01": quantiles[0], "q05": quantiles[1], "q25": quantiles[2],
                                                "median": quantiles[3]} if quantiles else {},
                top_differs_from_label=int((ok & (conf.top >= 0) & (conf.p_given < conf.p_top)).sum()))


def _named_spread(stats: dict, names: np.ndarray) -> dict:
    """A clustering stage's stats with label codes in ``spread_labels`` replaced by label names."""
    spread = dict(stats["spread_labels"], worst={str(names[k]): v for k, v in stats["spread_labels"]["worst"].items()})
    return dict(stats, spread_labels=spread)


def _size_summary(sizes: np.ndarray) -> dict:
    return {"min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max()),
            "singletons": int((sizes == 1).sum()), "pairs": int((sizes == 2).sum())}
