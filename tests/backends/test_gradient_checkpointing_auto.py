"""gradient_checkpointing="auto" (issue 21): off on the CPU; on CUDA on only when one micro-batch's
activations, its logits chunk and the gradients and optimizer state still to come exceed the free
memory less a headroom. True/False keep their meaning; the CLI and YAML take all three values.
The free-memory source and the device type are replaced here: no GPU is needed."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from miles_sdk import Config, Sample, Trainer
from miles_sdk._errors import ConfigError
from miles_sdk.backends import _memory, torch_backend
from miles_sdk.backends._memory import helpful_flags, micro_batch_tokens, resolve_gradient_checkpointing
from miles_sdk.backends.torch_backend import TorchBackend
from miles_sdk.distributed.launch import _free_port
from miles_sdk.testing import small_config, tiny_policy

CUDA = torch.device("cuda")
TOTAL = 100_000_000
MARGIN = int(_memory.CHECKPOINTING_HEADROOM * TOTAL)

# The tiny Llama: h=32, I=64, 1 layer, 1 KV head of 16: (20h + 4kv + 8I) x layers bytes a token.
PER_TOKEN = (20 * 32 + 4 * 16 + 8 * 64) * 1
TOKENS = 2 * 1000  # micro_batch_size 2 x rollout_max_context_len 1000
LOGITS = 1024 * 311 * 4  # log_probs_chunk_size (default 1024) x vocab, bf16 logits + gradient
TO_COME = 19_264 * 4 * 3  # fp32 trained parameters: a gradient and two AdamW moments each
NEED = TOKENS * PER_TOKEN + LOGITS + TO_COME


def _free(monkeypatch: pytest.MonkeyPatch, free: int, total: int = TOTAL) -> list[torch.device]:
    asked: list[torch.device] = []

    def fake(device: torch.device) -> tuple[int, int]:
        asked.append(device)
        return free, total

    monkeypatch.setattr(_memory, "free_device_memory", fake)
    return asked


def _no_free_memory_source(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(device: torch.device) -> tuple[int, int]:
        raise AssertionError(f"the free memory of {device} was read")

    monkeypatch.setattr(_memory, "free_device_memory", fail)


def _cfg(**overrides: Any) -> Config:
    return small_config(rollout_max_context_len=1000, **overrides)


def test_auto_is_the_default_and_off_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Config().gradient_checkpointing == "auto"
    _no_free_memory_source(monkeypatch)
    model, _ = tiny_policy("unit", seed=0)
    assert resolve_gradient_checkpointing(_cfg(), model, torch.device("cpu")) is False


@pytest.mark.parametrize("given", [True, False])
def test_true_and_false_are_kept_on_any_device(monkeypatch: pytest.MonkeyPatch, given: bool) -> None:
    _no_free_memory_source(monkeypatch)
    model, _ = tiny_policy("unit", seed=0)
    for device in (torch.device("cpu"), CUDA):
        assert resolve_gradient_checkpointing(_cfg(gradient_checkpointing=given), model, device) is given


def test_auto_on_cuda_turns_on_exactly_when_the_estimate_exceeds_the_free_memory(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model, _ = tiny_policy("unit", seed=0)
    asked = _free(monkeypatch, MARGIN + NEED)  # fits to the byte
    with caplog.at_level(logging.INFO, logger="miles_sdk.backends._memory"):
        assert resolve_gradient_checkpointing(_cfg(), model, CUDA) is False
    assert asked == [CUDA]
    assert "gradient_checkpointing auto: off" in caplog.text
    caplog.clear()
    _free(monkeypatch, MARGIN + NEED - 1)  # one byte short
    with caplog.at_level(logging.INFO, logger="miles_sdk.backends._memory"):
        assert resolve_gradient_checkpointing(_cfg(), model, CUDA) is True
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "gradient_checkpointing auto: on: one micro-batch's activations ~" in message
    assert "micro_batch_size 2 x 1000 tokens" in message
    assert f"{TOTAL / 2**30:.2f} GiB" in message and "free" in message


def test_the_token_count_follows_the_batching_settings() -> None:
    assert micro_batch_tokens(small_config(use_dynamic_batch_size=True, max_tokens_per_gpu=4096))[0] == 4096
    assert micro_batch_tokens(small_config(rollout_max_context_len=300, rollout_max_prompt_len=500))[0] == 600
    assert micro_batch_tokens(small_config(rollout_max_prompt_len=100))[0] == 2 * (100 + 4)
    tokens, source = micro_batch_tokens(small_config())
    assert tokens == 2 * 4 and "no prompt bound" in source


def test_optimizer_state_already_there_and_offloaded_state_are_not_counted_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the offloaded optimizer only the fp32 gradients come to the device: an amount of
    free memory too small for the full optimizer fits then."""
    model, _ = tiny_policy("unit", seed=0)
    _free(monkeypatch, MARGIN + NEED - 1)
    offloaded = TorchBackend(_cfg(gradient_checkpointing=False, optimizer_cpu_offload=True), model)
    assert resolve_gradient_checkpointing(_cfg(), model, CUDA, optim=offloaded.optim) is False
    assert resolve_gradient_checkpointing(_cfg(), model, CUDA, optim=None) is True


def test_a_model_without_a_decoder_shape_stays_off_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _free(monkeypatch, 0)
    with caplog.at_level(logging.WARNING, logger="miles_sdk.backends._memory"):
        assert resolve_gradient_checkpointing(_cfg(), torch.nn.Linear(2, 2), CUDA) is False
    assert "Linear" in caplog.text and "--gradient-checkpointing" in caplog.text


def test_the_torch_backend_checkpoints_as_the_function_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    """The backend asks the one function (here as if on CUDA with too little memory) and turns
    the model's checkpointing on from its answer; on the CPU auto leaves it off."""
    model, _ = tiny_policy("unit", seed=0)
    backend = TorchBackend(_cfg(), model)
    assert backend.gradient_checkpointing is False and not model.is_gradient_checkpointing

    real = resolve_gradient_checkpointing
    seen: list[object] = []

    def on_cuda(args: Config, model: Any, device: torch.device, *, optim: Any = None) -> bool:
        seen.append(args.gradient_checkpointing)
        return real(args, model, CUDA, optim=optim)

    monkeypatch.setattr(torch_backend, "resolve_gradient_checkpointing", on_cuda)
    _free(monkeypatch, MARGIN)  # nothing left for the step
    model, _ = tiny_policy("unit", seed=0)
    backend = TorchBackend(_cfg(compile_model="off"), model)
    assert seen == ["auto"]
    assert backend.gradient_checkpointing is True and model.is_gradient_checkpointing


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "auto"),
        (["--gradient-checkpointing"], True),
        (["--no-gradient-checkpointing"], False),
        (["--gradient-checkpointing", "auto"], "auto"),
        (["--gradient-checkpointing", "false"], False),
        (["--gradient-checkpointing", "--lr", "1e-5"], True),
    ],
)
def test_the_flags_parse(argv: list[str], expected: object) -> None:
    assert Config.from_args(argv).gradient_checkpointing == expected


def test_a_bad_value_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="gradient-checkpointing"):
        Config.from_args(["--gradient-checkpointing", "sometimes"])
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        Config(gradient_checkpointing="yes")  # type: ignore[arg-type]
    for text, expected in (("auto", "auto"), ("true", True), ("false", False)):
        path = tmp_path / f"{text}.yaml"
        path.write_text(f"gradient_checkpointing: {text}\n")
        assert Config(custom_config_path=str(path)).gradient_checkpointing == expected
    path = tmp_path / "bad.yaml"
    path.write_text("gradient_checkpointing: sometimes\n")
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        Config(custom_config_path=str(path))


def test_an_oom_under_auto_still_suggests_checkpointing() -> None:
    flags = helpful_flags("train_forward_backward", small_config())
    assert any(f.startswith("--gradient-checkpointing (now 'auto')") for f in flags)
    on = helpful_flags("train", small_config(gradient_checkpointing=True))
    assert not any("--gradient-checkpointing" in f for f in on)


_AGREE = '''
import sys
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

from miles_sdk.backends._memory import _agree_over_shards


def main(rank, port, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    mesh = init_device_mesh("cpu", (2,))
    sharded = torch.nn.Parameter(distribute_tensor(torch.zeros(4), mesh, [Shard(0)]))
    agreed = _agree_over_shards(rank == 1, [sharded], torch.device("cpu"))
    own = _agree_over_shards(rank == 1, [torch.zeros(2)], torch.device("cpu"))
    with open(f"{out}.{rank}", "w") as f:
        f.write(f"{agreed} {own}")
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(main, args=(int(sys.argv[1]), sys.argv[2]), nprocs=2)
'''


def test_sharded_ranks_take_one_decision(tmp_path: Path) -> None:
    """FSDP ranks (two gloo processes here): only rank 1's estimate says on, and both turn it on,
    so the ranks recompute the same layers in backward. Unsharded parameters keep their own."""
    script = tmp_path / "agree.py"
    script.write_text(_AGREE)
    out = tmp_path / "out"
    subprocess.run([sys.executable, str(script), str(_free_port()), str(out)], check=True, timeout=300)
    assert (tmp_path / "out.0").read_text() == "True False"
    assert (tmp_path / "out.1").read_text() == "True True"


async def _length_reward(args: Config, sample: Sample) -> float:
    return float(len(sample.tokens) % 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the real free memory of a CUDA device")
def test_cuda_auto_reads_the_device_and_trains_either_way(caplog: pytest.LogCaptureFixture) -> None:
    """On a GPU, with the real free-memory source: a tiny step fits (off); a token budget of 10^9
    cannot (on), and the step then trains with the model's checkpointing on."""
    rows = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(3) for b in range(3)]
    decided: list[bool] = []
    budgets: list[dict[str, Any]] = [{}, {"use_dynamic_batch_size": True, "max_tokens_per_gpu": 10**9}]
    caplog.set_level(logging.INFO, logger="miles_sdk.backends._memory")
    for overrides in budgets:
        model, tok = tiny_policy("unit", seed=0)
        cfg = small_config(device="cuda", rollout_max_context_len=64, compile_model="off", **overrides)
        with Trainer(cfg, model=model, tokenizer=tok, dataset=rows, reward_model=_length_reward) as t:
            on = t.backend.gradient_checkpointing  # type: ignore[attr-defined]
            assert on == bool(model.is_gradient_checkpointing)
            assert math.isfinite(t.step()["train/grad_norm"])
        decided.append(on)
    assert decided == [False, True]
    assert "gradient_checkpointing auto: off" in caplog.text
    assert "gradient_checkpointing auto: on" in caplog.text and "GiB free of" in caplog.text
