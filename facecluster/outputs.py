"""Writing a run's output files as one set: checked before any compute, staged, switched together.

The guarantees (README "Output contract"), each kept by a test:

- Before anything is computed, ``--out`` is checked: it must be a folder or creatable as one
  (no parent that is a file, no symlink loop, writable), no file the run writes may be an
  input (the graph cache included, compared after resolving links), and no output name may
  be taken by a folder.
- Every file is staged in ``.facecluster-tmp-<pid>-*`` inside the output folder. Only when
  all are complete does the switch start: the old ``report.json`` is removed first, the other
  files are renamed into place, and ``report.json`` comes last, listing every file of the
  set with its size and SHA-256. So a folder whose ``report.json`` is present and matches
  (:func:`verify_outputs`) holds one run's complete set; a run killed during the switch
  leaves no ``report.json``, never an old one beside new tables. SIGINT and SIGTERM that
  arrive during the switch (a few renames) take effect after it.
- Temporaries a killed run left behind (``.facecluster-tmp-<pid>-*`` folders and
  ``.tmp-knn-<pid>-*.npz`` and ``.tmp-dask-<pid>-*.npy`` files of processes no longer running) are removed by the next run
  that writes to the same folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError

# what `clean` writes (the kNN graph cache, knn_graph.npz, comes on top where a graph is built)
OUTPUT_FILES = ("cleaned.csv", "audit.csv", "identities.csv", "report.json", "report.html", "review.html")
STAGE_PREFIX = ".facecluster-tmp-"
GRAPH_TMP_PREFIX = ".tmp-knn-"
SEAL = "report.json"
DASK_TMP_PREFIX = ".tmp-dask-"  # the scratch copy of the vectors a Dask graph build reads
_STALE = re.compile(rf"^({re.escape(STAGE_PREFIX)}|{re.escape(GRAPH_TMP_PREFIX)}|{re.escape(DASK_TMP_PREFIX)})(\d+)-")


class InterruptedAfterWrite(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived while the output set was being switched into place: the
    switch finished first, so the folder holds the complete new set."""


def check_output_dir(out_dir: str | Path, inputs: list, names=OUTPUT_FILES) -> Path:
    """Refuse, before any compute, an output folder the run could not write its files to, or
    whose files would overwrite an input. Raises :class:`InputError` (exit status 2)."""
    out_dir = Path(out_dir)
    try:
        resolved = out_dir.resolve(strict=False)
    except (RuntimeError, OSError) as exc:  # symlink loop (RuntimeError before Python 3.13)
        raise InputError(out_dir, f"output folder cannot be resolved ({_reason(exc)}); choose another --out") from None
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "output path exists and is not a folder; choose another --out")
    existing = resolved
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(out_dir, f"{existing} is a file, so the output folder cannot be made there; choose another --out")
    if not _writable(existing):
        raise InputError(out_dir, f"{existing} is not writable; choose another --out")
    targets = {}
    for name in names:
        target = out_dir / name
        if target.is_symlink() and not target.exists():
            continue  # a dangling link is replaced, not followed
        if target.exists() and not target.is_file():
            raise InputError(target, "an output name in the output folder is taken by something that is not a "
                                     "file; move it or choose another --out")
        try:
            targets[target.resolve()] = target
        except (RuntimeError, OSError) as exc:
            raise InputError(target, f"output file cannot be resolved ({_reason(exc)})") from None
    for path in inputs:
        if path is None:
            continue
        try:
            source = Path(path).resolve()
        except (RuntimeError, OSError):
            continue
        if source in targets:
            raise InputError(path, f"input would be overwritten by {targets[source].name} in {out_dir}; "
                                   "choose another --out")
    return out_dir


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def _writable(folder: Path) -> bool:
    """Whether a file can be created in ``folder`` (tried for real: permission bits say
    nothing to root, nor about a read-only file system)."""
    try:
        probe = tempfile.mkdtemp(dir=folder, prefix=f"{STAGE_PREFIX}{os.getpid()}-probe-")
    except OSError:
        return False
    os.rmdir(probe)
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the staging folders and graph temporaries that runs no longer alive left in
    ``folder``; returns what was removed. Another live run's temporaries are left alone."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _STALE.match(entry.name)
        if match is None or _alive(int(match.group(2))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_set(out_dir: str | Path, files: dict, report: dict, dump_report, *, keep: tuple[str, ...] = ()) -> list[Path]:
    """Stage every file, then switch the set into ``out_dir`` (see the module docstring).

    ``files`` maps a file name to a callable writing that file at the staged path it is
    given; ``report`` is the report dict, completed here with ``outputs`` (name → bytes and
    sha256 of every other file) and written last by ``dump_report(report, path)``. The files
    the folder's previous report.json listed and this set does not write are removed with the
    switch (another command's tables), but those named in ``keep``.
    """
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    stage = Path(tempfile.mkdtemp(dir=out_dir, prefix=f"{STAGE_PREFIX}{os.getpid()}-"))
    switched = False
    try:
        staged = []
        for name, write in files.items():
            path = stage / name
            write(path)
            staged.append(path)
        report = dict(report, outputs={p.name: {"bytes": p.stat().st_size, "sha256": file_digest(p)} for p in staged})
        seal = stage / SEAL
        dump_report(report, seal)
        with deferred_signals() as pending, _switch_lock(out_dir):
            # what the run that wrote here before listed and this one does not write (clean's
            # tables after a cluster run, say) goes too: the folder holds one run's set
            before = _listed_outputs(out_dir) - {p.name for p in staged} - {SEAL} - set(keep)
            (out_dir / SEAL).unlink(missing_ok=True)
            final = []
            for path in staged:
                target = out_dir / path.name
                os.replace(path, target)
                _after_rename(target)
                final.append(target)
            for name in before:
                (out_dir / name).unlink(missing_ok=True)
            os.replace(seal, out_dir / SEAL)
            final.append(out_dir / SEAL)
            switched = True
        if pending:
            raise InterruptedAfterWrite(f"{pending[0]} arrived while the outputs were switched in; they are complete")
        return final
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if created and not switched:
            try:  # a folder this call made and filled with nothing goes again
                out_dir.rmdir()
            except OSError:
                pass


@contextmanager
def _switch_lock(out_dir: Path):
    """An exclusive lock on the ``out_dir`` folder itself while a set is switched in (a POSIX
    advisory lock on its descriptor: no lock file is left behind; none where fcntl is
    missing or the file system has no locks). Two runs into one folder interleaved their
    renames, and the report.json that landed last listed files the other had overwritten.
    The staging, the long part, runs side by side; only the renames take turns."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here
        yield
        return
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without locks (some network mounts): switch in unlocked
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _listed_outputs(out_dir: Path) -> set[str]:
    """The files the report.json in ``out_dir`` lists (none when it is absent or unreadable);
    names only, never a path out of the folder."""
    try:
        listed = json.loads((out_dir / SEAL).read_text(encoding="utf-8")).get("outputs")
    except (OSError, ValueError, AttributeError):
        return set()
    if not isinstance(listed, dict):
        return set()
    return {name for name in listed if isinstance(name, str) and name == Path(name).name and not name.startswith(".")}


def _after_rename(target: Path) -> None:
    """Called after each file of the set is renamed into place (a test hook: a failure
    between renames must never leave an old report.json beside new tables)."""


@contextmanager
def deferred_signals():
    """Hold SIGINT and SIGTERM until the block is done; yields the list of names of those that
    arrived. Outside the main thread (where handlers cannot be set) the block runs as is."""
    pending: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield pending
        return
    wanted = [s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None)) if s is not None]
    previous = {s: signal.getsignal(s) for s in wanted}

    def hold(signum, frame):
        pending.append(signal.Signals(signum).name)

    for s in wanted:
        signal.signal(s, hold)
    try:
        yield pending
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def verify_outputs(out_dir: str | Path) -> tuple[bool, str]:
    """Whether ``out_dir`` holds one run's complete output set: report.json present, and every
    file it lists there with the listed size and SHA-256. Returns (ok, reason)."""
    out_dir = Path(out_dir)
    seal = out_dir / SEAL
    if not seal.is_file():
        return False, "no report.json: the run that wrote here did not finish (or never ran)"
    try:
        listed = json.loads(seal.read_text(encoding="utf-8")).get("outputs")
    except (OSError, ValueError) as exc:
        return False, f"report.json unreadable: {exc}"
    if not isinstance(listed, dict):
        return False, "report.json lists no output files (written by an older version?)"
    for name, meta in listed.items():
        path = out_dir / name
        if not path.is_file():
            return False, f"{name} listed in report.json is missing"
        if path.stat().st_size != meta.get("bytes") or file_digest(path) != meta.get("sha256"):
            return False, f"{name} is not the file report.json lists (another run's, or changed since)"
    return True, "complete"
