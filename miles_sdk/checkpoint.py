"""Checkpoints: atomic, verified directories holding model, optimizer, data source, RNG states and step.

Layout of a save folder::

    <dir>/rollout_<id>/state.pt         the state (torch.save)
    <dir>/rollout_<id>/<name>/...       files written beside state.pt (CheckpointFiles: sharded
                                        model and optimizer state, one file per training rank)
    <dir>/rollout_<id>/manifest.json    size and sha256 of every file above, written last
    <dir>/latest                        the id of the newest complete checkpoint

Why each step (issue 16.1-16.3):

* A checkpoint is written to ``<dir>/.tmp-rollout_<id>``, its files and the folder fsync'd, and only
  then renamed to ``rollout_<id>``; ``latest`` moves (write, fsync, rename, fsync the folder) only
  after that. A kill or power loss at any point leaves every earlier checkpoint valid.
* ``manifest.json`` records the size and sha256 of ``state.pt`` (hashed while it is written, so no
  second read) and of every file a :class:`CheckpointFiles` wrote (hashed and fsync'd after the
  writer returns). Loading checks it: a truncated or damaged file is found before torch reads it.
* Loading the latest checkpoint falls back to the newest complete one, with a warning that names
  each broken checkpoint skipped; loading a *named* step never falls back.
* Retention (``keep_last``, ``retain_interval``) deletes older checkpoints only after a new one is
  complete, and never the one ``latest`` names.
* A failed write (full disk, read-only mount) removes its partial folder and raises
  :class:`CheckpointSaveError` naming the folder, the free space and the checkpoint still valid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "CheckpointFiles",
    "CheckpointSaveError",
    "NoCheckpointError",
    "capture_rng_state",
    "check_save_dir",
    "checkpoint_problem",
    "complete_checkpoints",
    "latest_checkpoint",
    "load_checkpoint",
    "restore_rng_state",
    "retained",
    "save_checkpoint",
    "seed_everything",
]

logger = logging.getLogger(__name__)

_STATE_FILE = "state.pt"
_MANIFEST = "manifest.json"
_LATEST = "latest"
_PREFIX = "rollout_"
_MANIFEST_FORMAT = "miles_sdk.checkpoint/1"
_CHUNK = 1 << 22


class CheckpointError(Exception):
    """A checkpoint that cannot be written or read; the message names the folder and what to do."""


class NoCheckpointError(CheckpointError, FileNotFoundError):
    """The folder holds no complete checkpoint (or not the step asked for)."""


class CheckpointSaveError(CheckpointError, OSError):
    """Writing a checkpoint failed; the previous checkpoint (named in the message) is still valid."""


@dataclass(frozen=True)
class CheckpointFiles:
    """Files written into a checkpoint's folder instead of pickled into ``state.pt``: sharded
    training state that each rank writes itself (torch.distributed.checkpoint).

    In the state given to :func:`save_checkpoint` (anywhere in nested dicts), ``write`` is called
    with the sub-folder ``<checkpoint>/<name>`` before the manifest is written, so the manifest
    lists, sizes and hashes those files too, and they move into place with the rest. ``state.pt``
    keeps only the name. In the state :func:`load_checkpoint` returns, ``path`` is that sub-folder
    (already checked against the manifest)."""

    name: str
    write: Callable[[Path], None] | None = field(default=None, compare=False)
    path: Path | None = None


def _map_files(state: Any, fn: Callable[[CheckpointFiles], CheckpointFiles]) -> Any:
    """``state`` with every CheckpointFiles in it (through nested dicts) replaced by ``fn``'s. A
    dict holding none is returned as is (a model's state dict keeps its ``_metadata``)."""
    if isinstance(state, CheckpointFiles):
        return fn(state)
    if isinstance(state, dict):
        mapped = {k: _map_files(v, fn) for k, v in state.items()}
        if all(mapped[k] is v for k, v in state.items()):
            return state
        return mapped
    return state


def _write_files(state: dict[str, Any], folder: Path) -> tuple[dict[str, Any], list[str]]:
    """Run each CheckpointFiles writer into ``folder/<name>``; the state to pickle (names only)
    and the relative paths of the files written."""
    names: list[str] = []

    def write(files: CheckpointFiles) -> CheckpointFiles:
        if files.write is None:
            raise ValueError(f"CheckpointFiles({files.name!r}) given to save_checkpoint has no writer")
        if not files.name or "/" in files.name or files.name.startswith(".") or files.name == _STATE_FILE:
            raise ValueError(f"CheckpointFiles name {files.name!r}: use a plain folder name")
        if files.name in names:
            raise ValueError(f"two CheckpointFiles named {files.name!r} in one checkpoint")
        names.append(files.name)
        target = folder / files.name
        target.mkdir()
        files.write(target)
        return CheckpointFiles(files.name)

    pickled = _map_files(state, write)
    written = sorted(
        path.relative_to(folder).as_posix()
        for name in names
        for path in (folder / name).rglob("*")
        if path.is_file()
    )
    return pickled, written


def _hash_and_sync(path: Path) -> _FileRecord:
    """Size and sha256 of a file another writer made, fsync'd (its data and its folder)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
        os.fsync(f.fileno())
    return _FileRecord(path.stat().st_size, digest.hexdigest())


# ==== RNG =====================================================================================


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global RNG and torch (CPU and CUDA) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # numpy takes 32-bit seeds only
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states, for :func:`restore_rng_state`."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ==== writing =================================================================================


class _HashingFile:
    """A write-only file that hashes what passes through it (torch.save takes any file-like)."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.error: OSError | None = None
        """The write error, kept because torch's zip writer re-raises it as a bare RuntimeError."""

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        self.sha256.update(view)
        self.size += view.nbytes
        try:
            return self._file.write(view)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self._file.flush()

    def close_synced(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def close(self) -> None:
        self._file.close()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _free_space(root: Path) -> str:
    probe = root if root.exists() else root.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return "unknown free space"
    return f"{free / 2**30:.2f} GiB free"


def retained(ids: list[int], keep_last: int | None, retain_interval: int | None) -> set[int]:
    """Which checkpoint ids retention keeps: the newest ``keep_last``, and every id divisible by
    ``retain_interval``. Neither set keeps all; ``retain_interval`` alone keeps the newest one besides
    (Megatron's ``--save-retain-interval``)."""
    if keep_last is None and retain_interval is None:
        return set(ids)
    newest = sorted(ids, reverse=True)[: keep_last if keep_last is not None else 1]
    every = {i for i in ids if retain_interval and i % retain_interval == 0}
    return set(newest) | every


def save_checkpoint(
    directory: str | os.PathLike[str],
    rollout_id: int,
    state: dict[str, Any],
    *,
    keep_last: int | None = None,
    retain_interval: int | None = None,
) -> Path:
    """Write ``state`` atomically as ``directory/rollout_<rollout_id>`` and move ``latest`` to it;
    then apply retention (see :func:`retained`). Returns the checkpoint's path.

    Raises :class:`CheckpointSaveError` when the write fails; earlier checkpoints stay valid.
    """
    root = Path(directory)
    final = root / f"{_PREFIX}{rollout_id}"
    tmp = root / f".tmp-{_PREFIX}{rollout_id}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            pickled, extra = _write_files(state, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # a failed writer (a dead rank) leaves no partial folder
            raise
        records = {name: _hash_and_sync(tmp / name) for name in extra}
        for sub in {(tmp / name).parent for name in extra}:
            _fsync_dir(sub)
        out = _HashingFile(tmp / _STATE_FILE)
        try:
            torch.save(pickled, out)  # type: ignore[arg-type]  # any object with write/flush
            out.close_synced()
        except BaseException as exc:
            out.close()
            if isinstance(exc, RuntimeError) and out.error is not None:
                raise out.error from exc
            raise
        manifest = {
            "format": _MANIFEST_FORMAT,
            "rollout_id": rollout_id,
            "files": {_STATE_FILE: {"size": out.size, "sha256": out.sha256.hexdigest()}}
            | {name: {"size": rec.size, "sha256": rec.sha256} for name, rec in records.items()},
        }
        _write_synced(tmp / _MANIFEST, json.dumps(manifest, indent=1))
        _fsync_dir(tmp)
        if final.exists():  # re-saving a step: move the old one aside, never leave a gap that reads as valid
            old = root / f".old-{_PREFIX}{rollout_id}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
        _write_synced(root / ".latest.tmp", str(rollout_id))
        os.replace(root / ".latest.tmp", root / _LATEST)
        _fsync_dir(root)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = [i for i in complete_checkpoints(root) if i != rollout_id] if root.is_dir() else []
        still = (
            f"the previous checkpoint {root / f'{_PREFIX}{max(previous)}'} is still valid"
            if previous
            else "there is no earlier checkpoint"
        )
        raise CheckpointSaveError(
            exc.errno,
            f"saving checkpoint {final} failed: {exc.strerror or exc} ({_free_space(root)} on its disk); "
            f"{still}. Free space (or lower save_keep_last) or point --save at a writable disk",
        ) from exc
    _apply_retention(root, keep_last, retain_interval, protect=rollout_id)
    return final


def _apply_retention(root: Path, keep_last: int | None, retain_interval: int | None, protect: int) -> None:
    ids = _checkpoint_ids(root)
    keep = retained(ids, keep_last, retain_interval) | {protect}
    for i in ids:
        if i not in keep:
            # Rename first so that a kill mid-delete never leaves a half-deleted folder that looks valid.
            doomed = root / f".del-{_PREFIX}{i}"
            try:
                os.replace(root / f"{_PREFIX}{i}", doomed)
                shutil.rmtree(doomed)
            except OSError as exc:
                logger.warning("checkpoint retention: could not delete %s: %s", root / f"{_PREFIX}{i}", exc)
    for leftover in root.glob(f".del-{_PREFIX}*"):  # from a kill during an earlier deletion
        shutil.rmtree(leftover, ignore_errors=True)


def check_save_dir(directory: str | os.PathLike[str], needed_bytes: int = 0) -> None:
    """Fail now, not after the first steps, when ``directory`` cannot hold a checkpoint: a file
    where the folder should be, a folder that cannot be created or written (read-only mount), or a
    disk with less than ``needed_bytes`` free."""
    root = Path(directory)
    if root.exists() and not root.is_dir():
        raise CheckpointError(
            f"--save {root}: a file is in the way; the checkpoint folder must be a directory"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        _write_synced(probe, "ok")
        probe.unlink()
    except OSError as exc:
        raise CheckpointError(
            f"--save {root}: the checkpoint folder is not writable ({exc.strerror or exc}); "
            "point --save at a writable directory"
        ) from exc
    free = shutil.disk_usage(root).free
    if needed_bytes and free < needed_bytes:
        raise CheckpointError(
            f"--save {root}: {free / 2**30:.2f} GiB free, but one checkpoint needs about "
            f"{needed_bytes / 2**30:.2f} GiB; free space or point --save at a larger disk"
        )


# ==== reading =================================================================================


def _checkpoint_ids(root: Path) -> list[int]:
    ids = []
    for path in root.glob(f"{_PREFIX}*"):
        suffix = path.name[len(_PREFIX) :]
        if suffix.isdigit() and path.is_dir():
            ids.append(int(suffix))
    return sorted(ids)


def _marker(root: Path) -> int | None:
    try:
        text = (root / _LATEST).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


@dataclass(frozen=True)
class _FileRecord:
    size: int
    sha256: str | None


def _manifest(folder: Path) -> dict[str, _FileRecord] | None | str:
    """The manifest's file records; None for a checkpoint from before manifests; a str says why it is bad."""
    path = folder / _MANIFEST
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        files = raw["files"]
        return {name: _FileRecord(int(rec["size"]), rec.get("sha256")) for name, rec in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"unreadable {_MANIFEST} ({type(exc).__name__}: {exc})"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_problem(folder: str | os.PathLike[str], *, verify_checksum: bool = False) -> str | None:
    """Why the checkpoint folder is not complete, or None when it is. Sizes are always checked;
    the sha256 too with ``verify_checksum``. A folder without a manifest (written before manifests
    existed) is complete when its state file is there."""
    folder = Path(folder)
    state = folder / _STATE_FILE
    if not state.is_file():
        return f"{_STATE_FILE} is missing"
    records = _manifest(folder)
    if isinstance(records, str):
        return records
    if records is None:
        return None if state.stat().st_size > 0 else f"{_STATE_FILE} is empty"
    for name, rec in records.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != rec.size:
            return f"{name} has {size} bytes, the manifest says {rec.size} (truncated or overwritten)"
        if verify_checksum and rec.sha256 is not None and _sha256(path) != rec.sha256:
            return f"{name} does not match its sha256 in {_MANIFEST} (corrupted)"
    return None


def complete_checkpoints(directory: str | os.PathLike[str]) -> list[int]:
    """Ids of the checkpoints in ``directory`` that pass the size check, oldest first."""
    root = Path(directory)
    return [i for i in _checkpoint_ids(root) if checkpoint_problem(root / f"{_PREFIX}{i}") is None]


def latest_checkpoint(directory: str | os.PathLike[str]) -> int | None:
    """The rollout id of the newest complete checkpoint in ``directory`` (the one ``latest`` names
    when it is complete), or None."""
    root = Path(directory)
    marked = _marker(root)
    if marked is not None and checkpoint_problem(root / f"{_PREFIX}{marked}") is None:
        return marked
    complete = complete_checkpoints(root)
    return complete[-1] if complete else None


def _read(root: Path, rollout_id: int) -> dict[str, Any]:
    folder = root / f"{_PREFIX}{rollout_id}"
    if not folder.is_dir():
        raise NoCheckpointError(
            f"checkpoint {folder} does not exist (complete ones: {complete_checkpoints(root)})"
        )
    problem = checkpoint_problem(folder, verify_checksum=True)
    if problem is not None:
        raise CheckpointError(f"checkpoint {folder} is broken: {problem}")
    try:
        state = torch.load(folder / _STATE_FILE, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {folder} is broken: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {folder} is broken: {_STATE_FILE} holds {type(state).__name__}")
    resolved: dict[str, Any] = _map_files(state, lambda files: replace(files, path=folder / files.name))
    return resolved


def load_checkpoint(directory: str | os.PathLike[str], rollout_id: int | None = None) -> dict[str, Any]:
    """Read the checkpoint of ``rollout_id``; with None, the newest that reads back whole.

    A named step that is missing or broken is an error. Without one, a broken latest checkpoint
    is skipped with a warning that names it, and the next newest is tried. Raises
    :class:`NoCheckpointError` when none is complete.
    """
    root = Path(directory)
    if rollout_id is not None:
        return _read(root, rollout_id)
    marked = _marker(root)
    if (root / _LATEST).exists() and marked is None:
        logger.warning("checkpoint marker %s is empty or not a step number: ignored", root / _LATEST)
    candidates = sorted(
        set(_checkpoint_ids(root)) | ({marked} if marked is not None else set()), reverse=True
    )
    if marked is not None:  # ``latest`` first: a newer folder it does not name was never made current
        candidates = [marked] + [i for i in candidates if i != marked]
    for candidate in candidates:
        try:
            state = _read(root, candidate)
        except CheckpointError as exc:
            logger.warning("%s; falling back to an older checkpoint", exc)
            continue
        return state
    raise NoCheckpointError(
        f"{root} holds no complete checkpoint written by Trainer.save (expected {root}/{_PREFIX}<id>/"
        f"{_STATE_FILE}); pass the directory given to --save, not a step folder"
    )
