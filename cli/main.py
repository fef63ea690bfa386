"""The ``facecluster`` command: parses options, calls the library, prints. No logic lives here."""

from __future__ import annotations

import functools
import signal
import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Clean face-recognition training sets: wrong labels, outliers, near-duplicates, split identities.")
out_console = Console()
err_console = Console(stderr=True)


class DeviceChoice(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class PolicyChoice(str, Enum):
    conservative = "conservative"
    balanced = "balanced"
    aggressive = "aggressive"


class KnnChoice(str, Enum):
    auto = "auto"
    exact = "exact"
    ivf = "ivf"
    hnsw = "hnsw"


def _print_version(value: bool) -> None:
    if value:
        from facecluster import __version__

        out_console.print(f"facecluster {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    """facecluster: find and fix label problems in face datasets from their embeddings."""


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so the same cleanup runs as for Ctrl-C."""


def _raise_terminated(signum, frame):
    raise _Terminated()


@contextmanager
def _interrupts():
    """Ctrl-C and SIGTERM end a command with one line and the shell's status (130 / 143).
    The library's ``finally`` blocks remove what was staged; a signal that arrives while the
    outputs are switched in takes effect after the switch (facecluster.outputs)."""
    from facecluster.outputs import InterruptedAfterWrite

    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    except InterruptedAfterWrite:
        err_console.print("[bold red]interrupted[/] after the outputs were written in full", highlight=False,
                          soft_wrap=True)
        raise typer.Exit(code=130) from None
    except KeyboardInterrupt as exc:
        name = "terminated" if isinstance(exc, _Terminated) else "interrupted"
        err_console.print(f"[bold red]{name}[/], nothing written", highlight=False, soft_wrap=True)
        raise typer.Exit(code=143 if isinstance(exc, _Terminated) else 130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interruptible(command):
    """Run the whole command (its lazy imports included) under :func:`_interrupts`."""
    @functools.wraps(command)
    def run(*args, **kwargs):
        with _interrupts():
            return command(*args, **kwargs)

    return run


def _note_device(requested: str) -> None:
    """Say on the console, not only in report.json, that a GPU asked for is not there."""
    if requested == "cuda":
        from facecluster.device import resolve_device

        device = resolve_device(requested)
        if device.kind != "cuda":
            err_console.print(f"[yellow]note:[/] {escape(device.reason)}", highlight=False, soft_wrap=True)


def _fail(exc: Exception, code: int = 2) -> None:
    # one line whatever the terminal's width (a pipeline greps it): rich must not wrap it
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=code)


def _fail_os(exc: OSError) -> None:
    """The system refused mid-run (a disk filled up, a folder became read-only): one line,
    exit 1 (the input was fine; 2 is for bad input), nothing half-written left (the outputs
    are staged and switched in whole)."""
    where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
    _fail(RuntimeError(f"{where}{exc.strerror or exc}; nothing was written"), code=1)


def _warn_over_budget(report: dict) -> None:
    """The budget is checked against an estimate before the run; say so when the measured
    peak went over it after all."""
    memory = report.get("memory") or {}
    budget, peak = memory.get("budget_bytes"), memory.get("peak_rss_bytes")
    if budget and peak and peak > budget:
        err_console.print(f"[yellow]note:[/] the run's peak memory, {peak / 2**30:.3f} GiB, went over the "
                          f"--memory-budget of {budget / 2**30:.3f} GiB (the estimate it was checked against: "
                          f"{memory.get('estimate', {}).get('total_bytes', 0) / 2**30:.3f} GiB)", highlight=False,
                          soft_wrap=True)


@app.command()
@_interruptible
def clean(
    manifest: Annotated[Path, typer.Argument(help="CSV/TSV/Parquet manifest: one row per image, path + label columns.")],
    embeddings: Annotated[Optional[Path], typer.Option(help="Row-aligned embeddings (.npy/.npz/.parquet). Default: <manifest stem>.npy beside the manifest.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder for cleaned.csv, audit.csv, identities.csv, report.json.")] = Path("facecluster-out"),
    path_col: Annotated[str, typer.Option(help="Manifest column with the image path.")] = "path",
    label_col: Annotated[str, typer.Option(help="Manifest column with the identity label.")] = "label",
    k: Annotated[int, typer.Option(min=1, help="Neighbours per sample in the kNN graph.")] = 30,
    device: Annotated[DeviceChoice, typer.Option(help="Where to search: auto uses a GPU when one is usable.")] = DeviceChoice.auto,
    policy: Annotated[PolicyChoice, typer.Option(help="How strong a finding must be before it is acted on.")] = PolicyChoice.conservative,
    knn: Annotated[KnnChoice, typer.Option(help="kNN search: exact, ivf, hnsw, or auto (exact up to 100k rows on a CPU, else an IVF graph refined to recall 0.999 of the edges that matter: exact neighbours with a real chance of being the same person).")] = KnnChoice.auto,
    centre: Annotated[str, typer.Option(help="Subtract the set's mean direction: auto (decided from the data), yes, no.")] = "auto",
    knn_recall: Annotated[float, typer.Option(help="Recall of the edges that matter the approximate graph is built to (an IVF search seeds it, neighbour-of-neighbour refinement rounds finish it): lower is faster and loses outliers first (1M synthetic rows: graph 308 s at 0.999 on 2 cores; 100k rows: cleaning figures within 0.002 of the exact graph's but for one more wrong merge suggestion of 70).")] = 0.999,
    seed: Annotated[int, typer.Option(help="Seed for every random choice.")] = 0,
    stages: Annotated[str, typer.Option(help="Comma-separated stages that add evidence to the kNN votes: hierarchical, correlation, camsoftmax (empty: kNN votes alone).")] = "hierarchical,correlation,camsoftmax",
    cam_epochs: Annotated[int, typer.Option(min=0, help="Train the cam-softmax fold heads this many epochs from their closed form (0, the default: the closed-form heads, which ranked wrong labels as well on real embeddings at a fraction of the time).")] = 0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Analyse and print the summary; write nothing.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars and no summary table.")] = False,
    image_root: Annotated[Optional[Path], typer.Option(help="Folder the manifest's image paths are relative to, for report thumbnails and review.html's images; images outside it are never read or linked. Default: the manifest's folder.")] = None,
    decisions: Annotated[Optional[Path], typer.Option(help="decisions.csv exported from review.html (columns path, decision, label, note, timestamp; decision keep, drop, relabel or merge): a person's decision beats the algorithm on its row in this and every later run.")] = None,
    dask: Annotated[Optional[str], typer.Option(help="Search the kNN graph on a Dask cluster: local:N (N worker processes on this machine) or a scheduler address such as tcp://host:8786 (its workers must read the --out folder). Exact up to 100,000 rows (the outputs equal the local run's), IVF above it or with --knn ivf (refined here to --knn-recall). The stages run here. Needs the dask extra: pip install 'facecluster\\[dask]'.")] = None,
    memory_budget: Annotated[Optional[str], typer.Option(help="Most memory the run may hold, e.g. 6G or 6GiB (binary), 6GB (decimal). A run estimated over it is refused before the embeddings are read (.npy and Parquet; .npz right after loading), naming what needs the memory.")] = None,
) -> None:
    """Find mislabeled samples, outliers, near-duplicates and duplicate identities; write a cleaned manifest."""
    from facecluster import CleanConfig, InputError
    from facecluster import clean as run_clean
    from facecluster.camsoftmax import CamSoftmaxConfig
    from facecluster.progress import NullProgress, RichProgress

    centre_value = {"auto": "auto", "yes": True, "true": True, "no": False, "false": False}.get(centre.lower())
    if centre_value is None:
        _fail(ValueError(f"--centre must be auto, yes or no, got {centre!r}"))
    from facecluster.memory import parse_size

    try:
        budget = None if memory_budget is None else parse_size(memory_budget)
        if dask is not None:
            from facecluster.knn_dask import check_spec

            if check_spec(dask) is None and dry_run:
                raise ValueError("--dask with a cluster address needs --out (its workers read a scratch copy of the "
                                 "vectors there), not --dry-run")
            if knn.value == "hnsw":
                raise ValueError("--dask searches the exact or the IVF graph; --knn hnsw is not distributed")
        config = CleanConfig(k=k, device=device.value, knn_method=knn.value, knn_recall=knn_recall, centre=centre_value,
                             policy=policy.value, path_col=path_col, label_col=label_col, seed=seed,
                             stages=tuple(x.strip() for x in stages.split(",") if x.strip()),
                             camsoftmax=CamSoftmaxConfig(epochs=cam_epochs), memory_budget=budget)
    except ValueError as exc:  # a bad option value
        _fail(exc)
    _note_device(device.value)
    try:
        result = run_clean(manifest, embeddings, config, out_dir=None if dry_run else out,
                           progress=NullProgress() if quiet else RichProgress(err_console), image_root=image_root,
                           decisions=decisions, dask=dask)
    except InputError as exc:
        _fail(exc)
    except OSError as exc:
        _fail_os(exc)
    _warn_over_budget(result.report)
    if not quiet:
        _print_summary(result.summary(), None if dry_run else out)


class ClusterMethod(str, Enum):
    average = "average"
    finch = "finch"
    correlation = "correlation"


@app.command()
@_interruptible
def cluster(
    manifest: Annotated[Path, typer.Argument(help="CSV/TSV/Parquet manifest: one row per image; a label column is optional.")],
    embeddings: Annotated[Optional[Path], typer.Option(help="Row-aligned embeddings (.npy/.npz/.parquet). Default: <manifest stem>.npy.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder for clusters.csv and report.json.")] = Path("facecluster-clusters"),
    path_col: Annotated[str, typer.Option(help="Manifest column with the image path.")] = "path",
    label_col: Annotated[Optional[str], typer.Option(help="Optional label column: when given, the cut that best agrees with it is chosen.")] = None,
    method: Annotated[ClusterMethod, typer.Option(help="correlation (default): correlation clustering on the calibrated signed kNN graph, shared kNN neighbours weighed in when unlabelled; average: graph average linkage; finch: parameter-free FINCH.")] = ClusterMethod.correlation,
    threshold: Annotated[Optional[float], typer.Option(help="Average-linkage cut (cosine). Default: from the labels, or from the data.")] = None,
    level: Annotated[Optional[int], typer.Option(help="FINCH level (0 = finest). Default: from the labels, or the finest.")] = None,
    bias: Annotated[Optional[float], typer.Option(help="Correlation clustering: log-odds added to every pair (> 0 merges more). Default: from the labels, or 0.")] = None,
    smooth: Annotated[str, typer.Option(help="Correlation clustering: value the kNN edges with faces averaged with their likely-same neighbours: auto (without labels, for embeddings that had to be centred), yes, no.")] = "auto",
    attach: Annotated[str, typer.Option(help="Correlation clustering: let rows as far from their clustermates as strangers leave, then give single-row clusters to their nearest cluster where that cluster's faces list them as they list their own person's hard photos: auto (without labels), yes, no.")] = "auto",
    k: Annotated[int, typer.Option(min=1, help="Neighbours per sample in the kNN graph.")] = 30,
    device: Annotated[DeviceChoice, typer.Option(help="Where to search: auto uses a GPU when one is usable.")] = DeviceChoice.auto,
    knn: Annotated[KnnChoice, typer.Option(help="kNN search: exact, ivf, hnsw, or auto.")] = KnnChoice.auto,
    seed: Annotated[int, typer.Option(help="Seed for every random choice.")] = 0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Cluster and print the summary; write nothing.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars and no summary.")] = False,
) -> None:
    """Cluster faces by identity (labels optional); write clusters.csv and report.json."""
    from facecluster import ClusterConfig, InputError
    from facecluster import cluster as run_cluster
    from facecluster.progress import NullProgress, RichProgress

    choice = {"auto": None, "yes": True, "true": True, "no": False, "false": False}
    smooth_value, attach_value = choice.get(smooth.lower(), "bad"), choice.get(attach.lower(), "bad")
    for name, given, value in (("smooth", smooth, smooth_value), ("attach", attach, attach_value)):
        if value == "bad":
            _fail(ValueError(f"--{name} must be auto, yes or no, got {given!r}"))
    try:
        config = ClusterConfig(method=method.value, threshold=threshold, level=level, bias=bias, k=k, device=device.value,
                               knn_method=knn.value, path_col=path_col, label_col=label_col, seed=seed,
                               smooth=smooth_value, attach=attach_value)
    except ValueError as exc:  # a bad option value
        _fail(exc)
    _note_device(device.value)
    try:
        result = run_cluster(manifest, embeddings, config, out_dir=None if dry_run else out,
                             progress=NullProgress() if quiet else RichProgress(err_console))
    except InputError as exc:
        _fail(exc)
    except OSError as exc:
        _fail_os(exc)
    if not quiet:
        stage = result.report["stages"]["clustering"]
        table = Table(title="facecluster cluster", header_style="bold")
        table.add_column("what")
        table.add_column("value", justify="right")
        table.add_row("rows", str(result.faceset.n_samples))
        table.add_row("clusters", str(stage["n_clusters"]))
        table.add_row("singletons", str(stage["singletons"]))
        table.add_row("largest cluster", str(stage["largest"]))
        if "threshold" in stage:
            table.add_row("threshold", f"{stage['threshold']:.4f} ({stage['threshold_source']})")
        if "bias" in stage:
            table.add_row("bias", f"{stage['bias']:+.2f} ({stage['bias_source']}); "
                                  f"objective {stage['objective_gaec']:.1f} -> {stage['objective_refined']:.1f}")
        if stage.get("smoothing", {}).get("applied"):
            table.add_row("edges smoothed", f"{stage['smoothing']['neighbours']} neighbours ({stage['smoothing']['why']})")
        if stage.get("detach_strays", {}).get("detached"):
            det = stage["detach_strays"]
            table.add_row("rows let go", f"{det['detached']} of {det['rows_asked']} (null share {det['null_share']:.2f})")
        if stage.get("attach_singletons", {}).get("attached"):
            att = stage["attach_singletons"]
            table.add_row("single rows joined", f"{att['attached']} of {att['single_rows']} (null share {att['null_share']:.2f})")
        if "level" in stage:
            table.add_row("FINCH level", f"{stage['level']} of {len(stage['clusters_per_level'])} "
                                         f"({escape(stage['level_source'])})")
        if "agreement_with_labels" in stage:
            table.add_row("pairwise F vs labels", f"{stage['agreement_with_labels']['pairwise_f']:.3f}")
        table.add_row("time (s)", f"{result.report['timings']['total']:.1f}")
        out_console.print(table)
        out_console.print(f"outputs written to {escape(str(out))}" if not dry_run else "dry run: nothing written")


@app.command()
@_interruptible
def bench(
    size: Annotated[Optional[int], typer.Option(min=100, help="Rows of the generated clean set (noise is added on top). Default 10000.")] = None,
    dim: Annotated[Optional[int], typer.Option(min=2, help="Embedding dimension of the generated set. Default 512.")] = None,
    mean_images: Annotated[Optional[float], typer.Option(min=1.0, help="Mean images per identity of the generated set (identities = size / this). Default 15.")] = None,
    offset: Annotated[Optional[float], typer.Option(help="Shared mean direction of the generated set: 0 (default) = ArcFace-like, 2.2 = dlib-like.")] = None,
    effective_dim: Annotated[Optional[float], typer.Option(help="Identity centres' effective dimension (12 with --dim 128 --offset 2.2 matches dlib); default isotropic.")] = None,
    manifest: Annotated[Optional[Path], typer.Option(help="Bench on your own clean labelled set instead (noise is injected into it); the generator's options then do not apply.")] = None,
    embeddings: Annotated[Optional[Path], typer.Option(help="Embeddings for --manifest (default: its sibling .npy).")] = None,
    path_col: Annotated[str, typer.Option(help="--manifest's column with the image path.")] = "path",
    label_col: Annotated[str, typer.Option(help="--manifest's column with the identity label.")] = "label",
    mix: Annotated[Optional[str], typer.Option(help="Injected noise: web (8% wrong labels, 8% of identities open-set, 3% split, 3% near-duplicates; the default with --manifest) or synthetic (the generator's default).")] = None,
    long_tail: Annotated[bool, typer.Option("--long-tail", help="First subsample the identities to a web-like size distribution (most keep 1-3 images).")] = False,
    peers: Annotated[str, typer.Option(help="Comma-separated peers: cleanlab,hdbscan,finch,agglomerative,kmeans,infomap, or none.")] = ",".join(("cleanlab", "hdbscan", "finch", "agglomerative", "kmeans", "infomap")),
    k: Annotated[int, typer.Option(min=1, help="Neighbours per sample.")] = 30,
    seed: Annotated[int, typer.Option(min=0, help="Seed for generation, noise and every method.")] = 0,
    scaling: Annotated[Optional[str], typer.Option(help="Also time our pipeline alone on generated sets of these sizes (at least 100 rows each, with --dim, --mean-images, --offset and --effective-dim), e.g. 10000,100000.")] = None,
    memory_budget_gb: Annotated[float, typer.Option(help="Skip a peer whose known memory need exceeds this.")] = 8.0,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write all results as JSON here.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Run our pipeline and the peers on the same noisy set; print quality, time and peak memory side by side."""
    import json
    import math
    from dataclasses import asdict

    import numpy as np

    from facecluster import InputError
    from facecluster.bench import PEERS, bench_set, run_bench
    from facecluster.bench import scaling as run_scaling
    from facecluster.progress import NullProgress, RichProgress

    generator = {"size": size, "dim": dim, "mean_images": mean_images, "offset": offset, "effective_dim": effective_dim}
    if manifest is not None:
        given = [f"--{name.replace('_', '-')}" for name, value in generator.items() if value is not None]
        if given:  # they shape the generated set, and there is none
            _fail(ValueError(f"{', '.join(given)} shape the generated set; with --manifest the set is yours: leave "
                             "them out"))
    elif embeddings is not None:
        _fail(ValueError("--embeddings goes with --manifest (the generated set has its own)"))
    defaults = {"size": 10_000, "dim": 512, "mean_images": 15.0, "offset": 0.0, "effective_dim": None}
    generator = {name: defaults[name] if value is None else value for name, value in generator.items()}
    if not math.isfinite(generator["offset"]):
        _fail(ValueError(f"--offset must be a finite number, got {offset!r}"))
    if effective_dim is not None and not effective_dim > 0:
        _fail(ValueError(f"--effective-dim must be above 0, got {effective_dim!r}"))
    if not (math.isfinite(memory_budget_gb) and memory_budget_gb > 0):
        _fail(ValueError(f"--memory-budget-gb must be a positive number, got {memory_budget_gb!r}"))
    chosen = [] if peers.strip().lower() == "none" else list(dict.fromkeys(p.strip() for p in peers.split(",") if p.strip()))
    unknown = sorted(set(chosen) - set(PEERS))
    if unknown:
        _fail(ValueError(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(PEERS)}"))
    try:
        sizes = [int(v) for v in scaling.split(",")] if scaling else []
    except ValueError:
        _fail(ValueError(f"--scaling must be comma-separated integers, got {scaling!r}"))
    if any(n < 100 for n in sizes):
        _fail(ValueError(f"--scaling sizes must be at least 100 rows each (as --size), got {scaling!r}"))
    if json_out is not None:  # checked before the run, not after it
        if json_out.is_dir():
            _fail(InputError(json_out, "--json names a folder; give a file path"))
        if not json_out.parent.is_dir():
            _fail(InputError(json_out, f"--json's folder {json_out.parent} does not exist"))
    progress = NullProgress() if quiet else RichProgress(err_console)
    try:
        with progress.task("generate and inject noise", total=None):
            noisy = bench_set(generator["size"], dim=generator["dim"], offset=generator["offset"],
                              effective_dim=generator["effective_dim"], mean_images=generator["mean_images"],
                              seed=seed, manifest=manifest, embeddings=embeddings, path_col=path_col,
                              label_col=label_col, mix=mix, long_tail=long_tail)
        rows = run_bench(noisy, peers=chosen, k=k, seed=seed, memory_budget_gb=memory_budget_gb, progress=progress)
        scale_rows = (run_scaling(sizes, dim=generator["dim"], offset=generator["offset"],
                                  effective_dim=generator["effective_dim"], mean_images=generator["mean_images"], k=k,
                                  seed=seed, progress=progress) if sizes else [])
    except (InputError, ValueError) as exc:
        _fail(exc)
    _print_bench(rows, scale_rows, noisy)
    if json_out:
        shape = {"source": str(manifest)} if manifest else {"source": "synth", **generator}
        payload = {"set": {"rows": int(len(noisy.labels)), "dim": int(noisy.embeddings.shape[1]), **shape,
                           "identities": int(len(np.unique(noisy.labels))), "seed": seed,
                           "mix": mix or ("web" if manifest else "synthetic"), "long_tail": long_tail,
                           "injected": noisy.truth["issue"].replace("", "clean").value_counts().to_dict()},
                   "results": [asdict(r) for r in rows], "scaling": scale_rows}
        try:
            json_out.write_text(json.dumps(payload, indent=2, default=float))
        except OSError as exc:
            _fail(InputError(json_out, f"cannot write the results: {exc.strerror or exc}"))
        out_console.print(f"results written to {escape(str(json_out))}")


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _print_bench(rows, scale_rows, noisy) -> None:
    # the tables are wide: when stdout is a file or a pipe, do not wrap them at 80 columns
    console = out_console if out_console.is_terminal else Console(width=200)
    injected = noisy.truth["issue"].replace("", "clean").value_counts().to_dict()
    console.print(f"bench set: {len(noisy.labels):,} rows × {noisy.embeddings.shape[1]} dims; injected {injected}")
    cleaners = Table(title="Cleaning (acted on; merges as suggested pairs)", header_style="bold")
    cols = ["method", "time s", "peak MB", "noise F1", "mislabeled P/R", "outlier P/R", "near-dup P/R", "merge P/R",
            "relabel acc", "kept-label prec", "clean lost"]
    for c in cols:
        cleaners.add_column(c, justify="left" if c == "method" else "right")
    clusterers = Table(title="Clustering (vs the identity shown)", header_style="bold")
    for c in ["method", "time s", "peak MB", "pairwise P/R/F", "BCubed P/R/F", "NMI", "clusters"]:
        clusterers.add_column(c, justify="left" if c == "method" else "right")
    notes = []
    def pr(s: dict, a: str) -> str:
        if a + "_p" not in s:
            return "–"
        # a precision over nothing found and a recall over nothing injected are undefined, not 0
        p = "–" if s.get(a + "_n_pred") == 0 else f"{s[a + '_p']:.3f}"
        r = "–" if s.get(a + "_n_true") == 0 else f"{s[a + '_r']:.3f}"
        return f"{p}/{r}"

    def undefined_if(s: dict, key: str, count: str):
        return None if s.get(count) == 0 else s.get(key)

    for r in rows:
        s = r.scores
        if r.kind in ("cleaner", "stage"):
            cleaners.add_row(r.method, _fmt(r.seconds), _fmt(r.peak_mb),
                             _fmt(undefined_if(s, "noise_found_f1", "noise_found_n_true")),
                             pr(s, "mislabeled"), pr(s, "outlier"),
                             pr(s, "near_duplicate"), pr(s, "merge"), _fmt(undefined_if(s, "relabel_acc", "relabelled")),
                             _fmt(s.get("kept_label_precision")), _fmt(s.get("clean_rows_lost_share")))
        elif r.kind == "clusterer" and s:
            clusterers.add_row(r.method, _fmt(r.seconds), _fmt(r.peak_mb),
                               f"{s['pairwise_precision']:.3f}/{s['pairwise_recall']:.3f}/{s['pairwise_f']:.3f}",
                               f"{s['bcubed_precision']:.3f}/{s['bcubed_recall']:.3f}/{s['bcubed_f']:.3f}",
                               f"{s['nmi']:.3f}", str(s["n_clusters"]))
        if r.note:
            notes.append(f"{r.method}: {r.note}")
    console.print(cleaners)
    console.print(clusterers)
    for note in notes:
        console.print(f"  note: {escape(note)}", highlight=False)
    if scale_rows:
        scale = Table(title="Scaling: facecluster clean alone (one process)", header_style="bold")
        for c in ["rows", "time s", "kNN s", "correlation s", "hierarchical s", "cam-softmax s", "peak MB",
                  "µs / edge", "µs / edge w/o kNN", "mislabeled F1", "near-dup F1", "kept-label prec"]:
            scale.add_column(c, justify="right")
        for r in scale_rows:
            st = r["stage_seconds"]
            scale.add_row(f"{r['n']:,}", _fmt(r["seconds"]), _fmt(st.get("knn")), _fmt(st.get("correlation")),
                          _fmt(st.get("hierarchical")), _fmt(st.get("camsoftmax")), _fmt(r["peak_mb"]),
                          _fmt(r["us_per_edge"]), _fmt(r["us_per_edge_without_knn"]), _fmt(r["mislabeled_f1"]),
                          _fmt(r["near_duplicate_f1"]), _fmt(r["kept_label_precision"]))
        console.print(scale)


def _print_summary(summary: dict, out: Path | None) -> None:
    table = Table(title="facecluster clean", show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("rows", str(summary["rows"]))
    table.add_row("identities", str(summary["identities"]))
    for name, count in summary["issues"].items():
        table.add_row(f"issue: {name}", str(count))
    for name, count in summary["actions"].items():
        table.add_row(f"action: {name}", str(count))
    table.add_row("rows kept for retraining", str(summary["rows_kept"]))
    if summary.get("decided_by_person"):
        table.add_row("rows decided by a person", str(summary["decided_by_person"]))
    table.add_row("rows waiting for review", str(summary.get("review_queue", 0)))
    table.add_row("time (s)", f"{summary['seconds']:.1f}")
    out_console.print(table)
    decisions = summary.get("decisions") or {}
    if decisions.get("unknown_paths"):
        out_console.print(f"[yellow]{decisions['unknown_paths']} decision(s) name a path not in the manifest "
                          f"(e.g. {escape(', '.join(map(repr, decisions['unknown_examples'][:3])))}); listed in report.json[/yellow]")
    out_console.print(f"outputs written to {escape(str(out))}; review.html lists what waits for a person" if out
                      else "dry run: nothing written")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
