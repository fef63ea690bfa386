"""Load and validate a face set: the manifest rows plus row-aligned face embeddings.

Everything a later stage trusts (labels present, vectors finite and non-zero, rows aligned)
is checked here, once, and reported as :class:`~facecluster.errors.InputError`.
"""

from __future__ import annotations

import contextlib
import csv
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError, is_centre, not_utf8

MANIFEST_SUFFIXES = {".csv", ".tsv", ".txt", ".parquet", ".pq"}
EMBEDDING_SUFFIXES = (".npy", ".npz", ".parquet", ".pq")


@dataclass(frozen=True)
class FaceSet:
    """The manifest and its embeddings, validated.

    Attributes
    ----------
    manifest : pandas.DataFrame
        Every input column, verbatim (read as strings), in input order.
    labels : ndarray of shape (n_samples,), int64
        Label codes; ``label_names[labels[i]]`` is row i's label.
    label_names : ndarray of shape (n_labels,), object
        Distinct label strings, in order of first appearance.
    embeddings : ndarray of shape (n_samples, n_features), float32
        L2-normalised (and centred when ``centred``) vectors used by every stage.
    centred : bool
        Whether the set's mean direction was removed before re-normalising.
    path_col, label_col : str
        The manifest's path and label column names.
    source : dict
        Where the inputs came from (file paths), for the report.
    """

    manifest: pd.DataFrame
    labels: np.ndarray
    label_names: np.ndarray
    embeddings: np.ndarray
    centred: bool
    path_col: str
    label_col: str | None
    source: dict = field(default_factory=dict)
    centring_stats: dict = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def n_labels(self) -> int:
        return int(self.label_names.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def label_sizes(self) -> np.ndarray:
        """Images per label, shape (n_labels,), int64."""
        return np.bincount(self.labels, minlength=self.n_labels)


# --------------------------------------------------------------------------- manifest


def _nested_as_json(value):
    """A Parquet list or struct value as JSON text (every item kept); anything else as it is."""
    import json

    if isinstance(value, (list, tuple, dict, np.ndarray)):
        return json.dumps(value, default=lambda v: v.tolist() if isinstance(v, np.ndarray) else str(v))
    return value


def _quoting(sep: str) -> int:
    """TSV has no quoting (a tab never sits in a field): a quote character is the field's own,
    kept verbatim; CSV quotes fields that hold commas, quotes or line breaks."""
    return csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL


@contextlib.contextmanager
def _long_fields():
    """csv's reader with no field length limit (its default, 131,072 characters, raised an
    uncaught error on a long label), restored afterwards."""
    old = csv.field_size_limit(2**31 - 1)
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _read_header(path: Path) -> list[str]:
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with open(path, newline="", encoding="utf-8") as fh, _long_fields():
            header = next(csv.reader(fh, delimiter=sep, quoting=_quoting(sep)), None)
    except UnicodeDecodeError as exc:
        raise not_utf8(path) from exc
    except OSError as exc:
        raise InputError(path, f"cannot read manifest: {exc.strerror or exc}") from exc
    if not header:
        raise InputError(path, "manifest is empty: expected a header row naming the columns")
    return header


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a CSV/TSV or Parquet manifest with every column as text, verbatim.

    Raises
    ------
    InputError
        Unreadable file, unknown format, duplicate column names, ragged rows, no data rows.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "manifest not found")
    suffix = path.suffix.lower()
    if suffix in {".parquet", ".pq"}:
        try:
            import pyarrow.parquet as pq

            names = pq.read_schema(path).names
            _check_duplicate_columns(path, names)  # before pyarrow's own refusal of them
            table = pq.read_table(path)
        except InputError:
            raise
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise InputError(path, f"cannot read Parquet manifest: {exc}") from exc
        frame = table.to_pandas()
        for col in frame.columns:
            if frame[col].dtype == object:  # lists and structs as JSON text, not numpy's shortened repr
                frame[col] = frame[col].map(_nested_as_json)
        frame = frame.astype(object).where(frame.notna(), "").astype(str)
    else:
        names = _read_header(path)
        _check_duplicate_columns(path, names)
        sep = "\t" if suffix == ".tsv" else ","
        try:
            frame = pd.read_csv(
                path, sep=sep, dtype=str, keep_default_na=False, na_filter=False,
                encoding="utf-8", engine="c", quoting=_quoting(sep),
            )
        except pd.errors.ParserError as exc:
            _check_ragged_rows(path, sep, len(names))  # a row with more fields, by its row number
            raise InputError(path, f"malformed CSV: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise not_utf8(path) from exc
        # The C parser pads short rows with empty strings; find them so nothing is guessed.
        _check_ragged_rows(path, sep, len(names))
    if len(frame) == 0:
        raise InputError(path, "manifest has a header but no data rows")
    return frame.reset_index(drop=True)


def _check_duplicate_columns(path: Path, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InputError(path, f"duplicate column name {name!r} in the header", column=name)
        seen.add(name)


def _check_ragged_rows(path: Path, sep: str, n_cols: int) -> None:
    with open(path, newline="", encoding="utf-8") as fh, _long_fields():
        reader = csv.reader(fh, delimiter=sep, quoting=_quoting(sep))
        next(reader, None)
        # rows numbered as the table reads them: a blank or whitespace-only line is no row
        # (pandas skips it)
        for row_no, row in enumerate((r for r in reader if len(r) > 1 or (r and r[0].strip())), start=1):
            if len(row) != n_cols and any(cell.strip() for cell in row):
                raise InputError(
                    path,
                    f"expected {n_cols} fields, found {len(row)} (truncated or ragged row)",
                    row=row_no,
                )


def _check_columns(path: Path, frame: pd.DataFrame, path_col: str, label_col: str | None) -> None:
    wanted = [(path_col, "--path-col")] + ([(label_col, "--label-col")] if label_col is not None else [])
    for col, flag in wanted:
        if col not in frame.columns:
            have = ", ".join(map(repr, frame.columns))
            raise InputError(
                path, f"missing column {col!r} (columns present: {have}; choose with {flag})",
                column=col,
            )
    if path_col == label_col:
        raise InputError(path, "the path and label columns must differ", column=label_col)
    for col, what in ((label_col, "label"), (path_col, "path")):
        if col is None:
            continue
        empty = frame[col].str.strip() == ""
        if empty.any():
            first = int(np.flatnonzero(empty.to_numpy())[0]) + 1
            raise InputError(
                path, f"empty {what} ({int(empty.sum())} row(s) in all; first shown)",
                row=first, column=col,
            )


# --------------------------------------------------------------------------- embeddings


def default_embeddings_path(manifest: str | Path) -> Path:
    """The sibling file ``<manifest stem>.npy`` (or .npz / .parquet, first that exists)."""
    manifest = Path(manifest)
    for suffix in EMBEDDING_SUFFIXES:
        candidate = manifest.with_suffix(suffix)
        if candidate.is_file() and candidate != manifest:
            return candidate
    return manifest.with_suffix(".npy")


def read_embeddings(path: str | Path) -> np.ndarray:
    """Read an (n_samples, n_features) array from .npy, .npz or Parquet.

    .npy files are memory-mapped. A .npz must hold one array, or one named ``embeddings``.
    A Parquet file holds either one list-typed column or only numeric columns.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "embeddings file not found (pass --embeddings FILE)")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.keys())
                if "embeddings" in keys:
                    array = archive["embeddings"]
                elif len(keys) == 1:
                    array = archive[keys[0]]
                else:
                    raise InputError(
                        path, f"npz holds {len(keys)} arrays ({', '.join(keys)}); "
                        "expected one, or one named 'embeddings'",
                    )
        elif suffix in {".parquet", ".pq"}:
            array = _read_parquet_embeddings(path)
        else:
            raise InputError(path, f"unknown embeddings format {suffix!r}; use .npy, .npz or .parquet")
    except InputError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(path, f"cannot read embeddings (truncated or corrupt?): {exc}") from exc
    return _check_array(path, array)


def _read_parquet_embeddings(path: Path) -> np.ndarray:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise InputError(path, f"cannot read Parquet embeddings: {exc}") from exc
    frame = table.to_pandas()
    if frame.shape[1] == 1 and frame.dtypes.iloc[0] == object:
        col = frame.columns[0]
        listed = frame[col].map(lambda v: isinstance(v, (list, tuple, np.ndarray))).to_numpy()
        if not listed.all():  # a missing list, or a decimal, date or bool column with nulls
            row = int(np.flatnonzero(~listed)[0]) + 1
            value = frame[col].iloc[row - 1]
            got = "a missing value" if value is None else type(value).__name__
            raise InputError(path, f"an embedding column holds lists of numbers or numbers, got {got}", row=row,
                             column=str(col))
        lengths = frame[col].map(len).to_numpy()
        bad = np.flatnonzero(lengths != lengths[0]) if len(lengths) else []
        if len(bad):
            raise InputError(path, "embedding lists differ in length", row=int(bad[0]) + 1, column=col)
        return np.stack(frame[col].to_numpy())
    for col in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[col]):
            raise InputError(path, f"non-numeric embedding column (dtype {frame[col].dtype})", column=str(col))
    return frame.to_numpy()


def _as_array(path: Path, raw) -> np.ndarray:
    """``raw`` as an array (a memmap's buffer kept, no copy); a sparse matrix is refused by
    name (np.asarray would make it a 0-d object array)."""
    import scipy.sparse as sp

    if sp.issparse(raw):
        raise InputError(path, "embeddings are a sparse matrix: face embeddings are dense vectors; pass a dense "
                               "array (.toarray())")
    array = np.asarray(raw)
    if array.dtype.kind == "O" and array.ndim == 2 and not any(isinstance(v, (str, bytes)) for v in array.flat):
        # numbers held as Python objects (a list of lists of floats, a pandas object column);
        # text is not read as numbers (a file's is refused by its dtype)
        try:
            array = array.astype(np.float64)
        except TypeError as exc:  # a value no number can be made of (numpy's message, as sklearn's)
            raise TypeError(f"{path}: embeddings hold a value that is not a number: {exc}") from exc
    return array


def _check_array(path: Path, array: np.ndarray) -> np.ndarray:
    if array.dtype.kind == "c":
        raise InputError(path, f"Complex data not supported: embeddings must be real, got dtype {array.dtype}")
    if array.dtype.kind not in "fiu":
        raise InputError(path, f"embeddings must be numeric, got dtype {array.dtype}")
    if array.ndim != 2:
        raise InputError(
            path, f"embeddings must be 2-D (n_samples, n_features), got shape {tuple(array.shape)}"
        )
    if array.shape[1] == 0:
        raise InputError(path, f"embeddings are empty: 0 feature(s) (shape={tuple(array.shape)}) while a minimum "
                               "of 1 is required.")
    if array.shape[0] == 0:
        raise InputError(path, f"embeddings are empty: 0 sample(s) (shape={tuple(array.shape)})")
    return array


# --------------------------------------------------------------------------- vectors


def _normalise_checked(path: Path, raw: np.ndarray, chunk_bytes: int = 32 << 20) -> np.ndarray:
    """float32 L2-normalised copy of ``raw``, checking NaN/Inf and zero rows chunk by chunk
    (float64 chunks of ``chunk_bytes``, so a memmapped input is never held twice).

    Each row is first divided by its largest absolute value, so the norm is taken of values
    in [-1, 1]: squaring cannot overflow (a row at 1e200) or underflow to zero (a row at
    1e-200). Only a row whose values are all exactly 0 is refused as all-zero.
    """
    n, d = raw.shape
    chunk = max(1, chunk_bytes // (8 * d))
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, chunk):
        # may be a view of a float64 input: never written to
        block = np.asarray(raw[start:start + chunk], dtype=np.float64)
        finite = np.isfinite(block)
        if not finite.all():
            r, c = np.argwhere(~finite)[0]
            raise InputError(path, f"non-finite value {block[r, c]!r} (NaN or inf)", row=start + int(r) + 1,
                             column=int(c))
        scale = np.maximum(block.max(axis=1), -block.min(axis=1))  # max |x| per row, no (rows, d) temporary
        zero = scale == 0.0
        if zero.any():
            r = int(np.flatnonzero(zero)[0])
            raise InputError(path, "all-zero embedding vector (cannot be normalised)", row=start + r + 1)
        scaled = block / scale[:, None]  # every |value| <= 1, the largest exactly 1
        scaled /= np.sqrt(np.einsum("ij,ij->i", scaled, scaled))[:, None]  # norm in [1, sqrt(d)]
        out[start:start + chunk] = scaled
    return out


def centring_decision(unit: np.ndarray, *, seed: int = 0, max_rows: int = 1000) -> dict:
    """Decide from the data whether to subtract the set's mean direction.

    Rule: the distribution of cosines between pairs of samples (almost all pairs are
    different people). When its mean sits more than two of its standard deviations above
    zero, the embeddings share an offset direction (as dlib's do: different people at cosine
    ~0.83) that compresses every cosine near 1, so we centre; zero-centred models
    (ArcFace-style, random pairs at ~0 ± 0.05–0.1) are left as they are.

    The pairs are every pair among ``max_rows`` rows drawn at random (all of them in a smaller
    set): one matrix product, about half a million pairs, a few milliseconds whatever the set's
    size (200,000 pairs gathered one by one took 80 ms even for 700 rows).

    Returns a dict with ``centre`` (bool), ``random_pair_mean``, ``random_pair_std``,
    ``mean_norm``, ``n_pairs``.
    """
    n = unit.shape[0]
    if n < 3:
        return {"centre": False, "random_pair_mean": 0.0, "random_pair_std": 0.0, "mean_norm": 0.0, "n_pairs": 0}
    rows = np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False)) if n > max_rows else slice(None)
    sub = np.asarray(unit[rows], dtype=np.float64)
    cos = (sub @ sub.T)[np.triu_indices(len(sub), k=1)]
    mean, std = float(cos.mean()), float(cos.std())
    mean_norm = float(np.linalg.norm(unit.mean(axis=0, dtype=np.float64)))
    return {
        "centre": bool(mean > 2.0 * std),
        "random_pair_mean": mean,
        "random_pair_std": std,
        "mean_norm": mean_norm,
        "n_pairs": int(len(cos)),
    }


def prepare_embeddings(raw: np.ndarray, *, centre: bool | str = "auto", file: str | Path = "<embeddings>",
                       seed: int = 0) -> tuple[np.ndarray, bool, dict]:
    """Validate and normalise raw vectors; centre them when ``centre`` says so.

    Returns ``(unit_vectors float32 (n, d), centred, stats)``.
    """
    if not is_centre(centre):
        # bool("no") is True: any other text or value would centre silently
        raise ValueError(f"centre must be True, False or 'auto', got {centre!r}")
    # _as_array keeps a memmap's buffer (no copy); _normalise_checked reads it chunk by chunk
    raw = _check_array(Path(file), _as_array(Path(file), raw))
    unit = _normalise_checked(Path(file), raw)
    stats = centring_decision(unit, seed=seed)
    do_centre = stats["centre"] if centre == "auto" else bool(centre)
    stats["mode"] = str(centre)
    if do_centre:
        mean = unit.mean(axis=0, dtype=np.float64).astype(np.float32)
        unit -= mean
        norms = np.sqrt(np.einsum("ij,ij->i", unit, unit))  # no (n, d) temporary
        # A sample equal to the mean direction has nothing left after centring.
        degenerate = norms <= 1e-6
        if degenerate.any():
            r = int(np.flatnonzero(degenerate)[0])
            if centre != "auto":
                raise InputError(file, "embedding equals the set's mean direction; cannot centre "
                                 "(pass centre=False / --centre no)", row=r + 1)
            # asked of no one: centring would empty a row (a set of one repeated face, say),
            # so the set stays uncentred, and the report says why
            stats["centre"] = do_centre = False
            stats["not_centred_because"] = f"row {r + 1} equals the set's mean direction"
            return _normalise_checked(Path(file), raw), False, stats
        unit /= norms[:, None]
    return unit, bool(do_centre), stats


def load_faceset(
    manifest: str | Path | pd.DataFrame,
    embeddings: str | Path | np.ndarray | None = None,
    *,
    path_col: str = "path",
    label_col: str | None = "label",
    centre: bool | str = "auto",
    seed: int = 0,
) -> FaceSet:
    """Load a manifest and its row-aligned embeddings into a validated :class:`FaceSet`.

    Parameters
    ----------
    manifest : path to a CSV/TSV/Parquet file, or a DataFrame already in memory
    embeddings : path (.npy/.npz/.parquet), an array of shape (n_samples, n_features), or
        None for the manifest's sibling ``<stem>.npy``
    path_col, label_col : manifest columns holding the image path and the identity label;
        ``label_col=None`` for unlabelled faces (every row then gets label code 0, name "")
    centre : "auto" (decide from the data, see :func:`centring_decision`), True or False

    Raises
    ------
    InputError
        For every kind of bad input, naming file, row and column.
    """
    if isinstance(manifest, pd.DataFrame):
        manifest_path: Path = Path("<manifest>")
        # Missing cells (NaN, None, pd.NA, NaT) become "" exactly as an empty CSV cell or a
        # Parquet null does, so _check_columns refuses a missing path or label by row and
        # column; present values (numeric labels included) are kept as their text.
        frame = manifest.astype(object).where(manifest.notna(), "").astype(str).reset_index(drop=True)
        _check_duplicate_columns(manifest_path, list(map(str, frame.columns)))
        if len(frame) == 0:
            raise InputError(manifest_path, "manifest has no rows")
    else:
        manifest_path = Path(manifest)
        frame = read_manifest(manifest_path)
    _check_columns(manifest_path, frame, path_col, label_col)

    if embeddings is None:
        if isinstance(manifest, pd.DataFrame):
            raise InputError(manifest_path, "embeddings are required when the manifest is a DataFrame")
        emb_path: Path = default_embeddings_path(manifest_path)
        raw = read_embeddings(emb_path)
    elif isinstance(embeddings, (str, Path)):
        emb_path = Path(embeddings)
        raw = read_embeddings(emb_path)
    else:
        emb_path = Path("<embeddings>")
        raw = _check_array(emb_path, _as_array(emb_path, embeddings))

    if raw.shape[0] != len(frame):
        raise InputError(
            emb_path,
            f"{raw.shape[0]} embedding rows but the manifest {manifest_path} has {len(frame)} rows; "
            "they must be row-aligned",
            row=min(raw.shape[0], len(frame)) + 1,
        )
    unit, centred, stats = prepare_embeddings(raw, centre=centre, file=emb_path, seed=seed)
    if label_col is None:
        codes, names = np.zeros(len(frame), dtype=np.int64), np.array([""], dtype=object)
    else:
        codes, names = pd.factorize(frame[label_col], sort=False)
    return FaceSet(
        manifest=frame,
        labels=codes.astype(np.int64),
        label_names=np.asarray(names, dtype=object),
        embeddings=unit,
        centred=centred,
        path_col=path_col,
        label_col=label_col,
        source={"manifest": str(manifest_path), "embeddings": str(emb_path)},
        centring_stats=stats,
    )
