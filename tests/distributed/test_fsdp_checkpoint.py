"""Sharded FSDP checkpoints (torch.distributed.checkpoint): each rank writes its shard into the
checkpoint folder, the manifest covers the shards, and a run saved with 2 ranks resumes with 1 or 2
exactly where the uninterrupted run goes. save_hf exports the full weights gathered on rank 0."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from miles_sdk import Config, Sample, Trainer
from miles_sdk.checkpoint import CheckpointFiles, load_checkpoint, save_checkpoint
from miles_sdk.testing.run import small_config
from miles_sdk.testing.tiny import tiny_policy

TWO_RANKS: dict[str, Any] = {
    "train_backend": "fsdp",
    "actor_num_gpus_per_node": 2,
    "distributed_launcher": "processes",
}
DATASET = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(3) for b in range(3)]
COMPARED = ("train/grad_norm", "train/pg_loss", "train/entropy_loss", "train/ppo_kl")


async def spread_reward(args: Config, sample: Sample) -> float:
    return float(sum(sample.tokens[-4:]) % 3) / 2.0


def _config(**overrides: Any) -> Config:
    # Two optimizer steps per rollout: the second one's update depends on Adam's state, so a
    # resume that lost or mangled the optimizer shards would show.
    return small_config(
        rollout_batch_size=4,
        n_samples_per_prompt=2,
        lr=1e-3,
        rollout_seed=7,
        global_batch_size=4,
        **overrides,
    )


def _trainer(config: Config) -> Trainer:
    model, tok = tiny_policy("unit", seed=0)
    return Trainer(config, model=model, tokenizer=tok, reward_model=spread_reward, dataset=DATASET)


def test_sharded_checkpoint_resumes_on_one_and_two_ranks(tmp_path: Path) -> None:
    save = tmp_path / "ckpt"
    hf = tmp_path / "hf_{rollout_id}"
    with _trainer(_config(save=str(save), save_interval=1, save_hf=str(hf), **TWO_RANKS)) as trainer:
        trainer.step()  # saved as rollout_1
        full = trainer.backend.ranks.call("full_weights", [(), ()])[0]  # type: ignore[attr-defined]
        straight = trainer.step()  # the uninterrupted next step

    folder = save / "rollout_1"
    shards = sorted(p.name for p in (folder / "shards").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    manifest = json.loads((folder / "manifest.json").read_text())["files"]
    assert set(manifest) == {"state.pt"} | {f"shards/{name}" for name in shards}
    state = load_checkpoint(save, 1)
    backend_state = state["backend"]
    assert "model" not in backend_state, "the model is in the shards, not in state.pt"
    assert backend_state["world_size"] == 2 and backend_state["training"]["optimizers"] == {"": True}
    assert backend_state["shards"] == CheckpointFiles("shards", path=folder / "shards")

    # save_hf: the full weights, gathered on rank 0, as a transformers folder.
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf_0")).state_dict()
    for name, value in full.items():
        torch.testing.assert_close(exported[name], value, rtol=0, atol=0, msg=name)

    for world in (1, 2):
        config = _config(load=str(save), ckpt_step=1, **(TWO_RANKS | {"actor_num_gpus_per_node": world}))
        with _trainer(config) as resumed_trainer:
            assert resumed_trainer.rollout_id == 1
            resumed = resumed_trainer.step()
        for key in COMPARED:
            assert resumed[key] == pytest.approx(straight[key], rel=1e-4, abs=1e-7), (world, key)


def test_a_full_state_checkpoint_of_the_earlier_format_still_loads() -> None:
    """Before sharded checkpoints the FSDP backend saved the whole state from rank 0: still read."""
    config = _config(train_backend="fsdp")
    with _trainer(config) as trained:
        trained.step()
        old_format = trained.backend.full_state_dict()  # type: ignore[attr-defined]
        weights = {k: v.clone() for k, v in trained.policy.model.state_dict().items()}
        step_id = trained.backend.ranks.rank.backend.step_id  # type: ignore[attr-defined]
    with _trainer(config) as fresh:
        fresh.backend.load_state_dict(old_format)
        assert fresh.backend.ranks.rank.backend.step_id == step_id  # type: ignore[attr-defined]
        for name, value in fresh.policy.model.state_dict().items():
            torch.testing.assert_close(value, weights[name], rtol=0, atol=0, msg=name)


# ---- CheckpointFiles in miles_sdk.checkpoint, without ranks ------------------------------------


def _two_files(folder: Path) -> None:
    (folder / "a.bin").write_bytes(b"a" * 100)
    (folder / "sub").mkdir()
    (folder / "sub" / "b.bin").write_bytes(b"b" * 10)


def test_checkpoint_files_are_written_in_the_folder_and_listed_in_the_manifest(tmp_path: Path) -> None:
    out = save_checkpoint(tmp_path, 1, {"backend": {"shards": CheckpointFiles("shards", write=_two_files)}})
    manifest = json.loads((out / "manifest.json").read_text())["files"]
    assert manifest["shards/a.bin"]["size"] == 100 and manifest["shards/sub/b.bin"]["size"] == 10
    loaded = load_checkpoint(tmp_path)["backend"]["shards"]
    assert loaded.path == out / "shards" and (loaded.path / "sub" / "b.bin").read_bytes() == b"b" * 10


def test_a_truncated_shard_falls_back_to_the_previous_checkpoint(tmp_path: Path) -> None:
    for i in (1, 2):
        save_checkpoint(tmp_path, i, {"i": i, "shards": CheckpointFiles("shards", write=_two_files)})
    (tmp_path / "rollout_2" / "shards" / "a.bin").write_bytes(b"a" * 50)
    assert load_checkpoint(tmp_path)["i"] == 1


def test_a_failing_writer_leaves_no_partial_folder(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, {"i": 1})

    def dies(folder: Path) -> None:
        (folder / "half").write_bytes(b"x")
        raise RuntimeError("training rank 1 died during save_shards")

    with pytest.raises(RuntimeError, match="rank 1"):
        save_checkpoint(tmp_path, 2, {"i": 2, "shards": CheckpointFiles("shards", write=dies)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "rollout_1"]
    assert load_checkpoint(tmp_path)["i"] == 1


def test_a_torch_backend_checkpoint_is_refused_by_name(tmp_path: Path) -> None:
    """The torch backend's optimizer state has another layout: loading it into FSDP ranks failed
    deep inside torch.distributed.checkpoint."""
    save = tmp_path / "ckpt"
    with _trainer(_config(save=str(save), save_interval=1)) as trainer:
        trainer.step()
    with pytest.raises(ValueError, match="not written by train_backend='fsdp'.*train_backend='torch'"):
        _trainer(_config(train_backend="fsdp", load=str(save)))
