"""miles_sdk.checkpoint on its own: atomic writes, verification, fallback, retention, save errors (issue 16.1-16.3)."""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from miles_sdk import checkpoint as ckpt
from miles_sdk.checkpoint import (
    CheckpointError,
    CheckpointSaveError,
    NoCheckpointError,
    check_save_dir,
    latest_checkpoint,
    load_checkpoint,
    retained,
    save_checkpoint,
)


def _state(i: int) -> dict[str, Any]:
    return {"rollout_id": i, "w": torch.full((64,), float(i))}


def _save_all(root: Path, ids: list[int], **kw: Any) -> None:
    for i in ids:
        save_checkpoint(root, i, _state(i), **kw)


def test_save_writes_a_manifest_with_size_and_sha256(tmp_path: Path) -> None:
    out = save_checkpoint(tmp_path, 3, _state(3))
    manifest = json.loads((out / "manifest.json").read_text())
    record = manifest["files"]["state.pt"]
    assert record["size"] == (out / "state.pt").stat().st_size
    assert len(record["sha256"]) == 64
    assert (tmp_path / "latest").read_text() == "3"
    assert load_checkpoint(tmp_path)["rollout_id"] == 3


def test_truncated_latest_falls_back_with_a_warning_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _save_all(tmp_path, [1, 2])
    broken = tmp_path / "rollout_2" / "state.pt"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])  # a kill mid-write of a file outside our tmp dance
    with caplog.at_level(logging.WARNING, logger="miles_sdk.checkpoint"):
        state = load_checkpoint(tmp_path)
    assert state["rollout_id"] == 1
    assert any("rollout_2" in r.getMessage() and "truncated" in r.getMessage() for r in caplog.records)
    assert latest_checkpoint(tmp_path) == 1


def test_bit_flip_with_the_same_size_is_caught_by_the_checksum(tmp_path: Path) -> None:
    _save_all(tmp_path, [1, 2])
    path = tmp_path / "rollout_2" / "state.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert load_checkpoint(tmp_path)["rollout_id"] == 1
    with pytest.raises(CheckpointError, match=r"rollout_2 is broken: .*sha256"):
        load_checkpoint(tmp_path, 2)  # a named step never falls back


@pytest.mark.parametrize("marker", ["", "garbage\n", "7"])
def test_empty_or_bad_latest_marker_is_not_a_crash(tmp_path: Path, marker: str) -> None:
    _save_all(tmp_path, [1, 2])
    (tmp_path / "latest").write_text(marker)  # "7" names a checkpoint that does not exist
    assert latest_checkpoint(tmp_path) == 2
    assert load_checkpoint(tmp_path)["rollout_id"] == 2


def test_partial_first_checkpoint_and_empty_folder_hold_no_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert latest_checkpoint(tmp_path / "empty") is None
    partial = tmp_path / "partial"
    (partial / ".tmp-rollout_1").mkdir(parents=True)  # killed before the rename
    (partial / ".tmp-rollout_1" / "state.pt").write_bytes(b"PK\x03\x04")
    (partial / "rollout_2").mkdir()  # a step folder without its state
    assert latest_checkpoint(partial) is None
    with pytest.raises(NoCheckpointError, match="holds no complete checkpoint"):
        load_checkpoint(partial)


def test_checkpoint_without_manifest_still_loads(tmp_path: Path) -> None:
    """Checkpoints written before manifests existed stay readable."""
    out = save_checkpoint(tmp_path, 4, _state(4))
    (out / "manifest.json").unlink()
    assert load_checkpoint(tmp_path)["rollout_id"] == 4


@pytest.mark.parametrize(
    ("keep_last", "retain_interval", "expected"),
    [
        (None, None, {1, 2, 3, 4, 5, 6, 7}),
        (2, None, {6, 7}),
        (None, 3, {3, 6, 7}),
        (2, 3, {3, 6, 7}),
        (1, 2, {2, 4, 6, 7}),
    ],
)
def test_retention_keeps_last_k_and_every_m_th(
    tmp_path: Path, keep_last: int | None, retain_interval: int | None, expected: set[int]
) -> None:
    _save_all(tmp_path, list(range(1, 8)), keep_last=keep_last, retain_interval=retain_interval)
    left = {int(p.name.split("_")[1]) for p in tmp_path.glob("rollout_*")}
    assert left == expected == retained(list(range(1, 8)), keep_last, retain_interval)
    assert not list(tmp_path.glob(".*-rollout_*"))  # no tmp/old/del leftovers
    assert load_checkpoint(tmp_path)["rollout_id"] == 7


def test_failed_save_names_folder_and_free_space_and_keeps_the_previous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_checkpoint(tmp_path, 1, _state(1))
    real_init = ckpt._HashingFile.__init__

    class FullDisk:
        """The file under the checkpoint writer: the third write hits ENOSPC, as on a full disk."""

        def __init__(self, f: Any) -> None:
            self.f, self.calls = f, 0

        def write(self, data: Any) -> int:
            self.calls += 1
            if self.calls > 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return int(self.f.write(data))

        def __getattr__(self, name: str) -> Any:
            return getattr(self.f, name)

    def init(self: ckpt._HashingFile, path: Path) -> None:
        real_init(self, path)
        self._file = FullDisk(self._file)  # type: ignore[assignment]

    monkeypatch.setattr(ckpt._HashingFile, "__init__", init)
    with pytest.raises(CheckpointSaveError) as info:
        save_checkpoint(tmp_path, 2, _state(2))
    message = str(info.value)
    assert str(tmp_path / "rollout_2") in message and "GiB free" in message
    assert "rollout_1 is still valid" in message
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert not list(tmp_path.glob(".tmp-*")) and not (tmp_path / "rollout_2").exists()
    monkeypatch.undo()
    assert load_checkpoint(tmp_path)["rollout_id"] == 1


def test_check_save_dir_reports_a_file_in_the_way(tmp_path: Path) -> None:
    blocker = tmp_path / "ckpt"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointError, match="a file is in the way"):
        check_save_dir(blocker)
    with pytest.raises(CheckpointError, match="not writable"):
        check_save_dir(blocker / "sub")  # a folder under a file cannot be created


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_check_save_dir_reports_a_read_only_folder(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(CheckpointError, match="not writable"):
            check_save_dir(ro)
    finally:
        ro.chmod(0o700)


def test_check_save_dir_reports_too_little_room(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="GiB free, but one checkpoint needs"):
        check_save_dir(tmp_path, needed_bytes=2**62)
    check_save_dir(tmp_path, needed_bytes=1)
    assert not list(tmp_path.iterdir())  # the write probe is removed
