"""compile_model under train_backend="fsdp": each FSDP2 layer group runs its forward compiled.

FSDP2's hooks (all-gather, cast, reshard) stay eager around the compiled forward; the layers share
one code object, so they share compiled graphs as under the torch backend. These run one CPU rank
in the driver's process over gloo, with AOT autograd's eager backend (the joint graph, its
partition and saved tensors, without a C++ build); tests/distributed/test_fsdp_cuda.py runs
inductor on the GPU.
"""

from __future__ import annotations

import shutil
from typing import Any, Literal, NamedTuple

import pytest
import torch
from torch import nn

from miles_sdk import Config, Sample, Trainer
from miles_sdk.backends._compile import CompiledLayers
from miles_sdk.testing.run import StepsResult, assert_same_steps, small_config, step_trainer
from miles_sdk.testing.tiny import tiny_policy

COMPARED = ("train/grad_norm", "train/pg_loss", "train/entropy_loss", "train/loss", "train/ppo_kl")
# Prompts of different lengths, so that packing has padding to remove.
DATASET = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in (1, 22, 333, 4444) for b in (5, 66)]


async def spread_reward(args: Config, sample: Sample) -> float:
    return float(sum(sample.tokens[-4:]) % 3) / 2.0


class _Counting:
    """AOT autograd's eager backend, counting the graphs it compiles and their calls (and which
    calls ran inside a backward: gradient checkpointing's recompute)."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.compiled = 0
        self.in_backward: list[bool] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        if self.fail:
            raise RuntimeError("no kernels for this")
        self.compiled += 1
        compiled = torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

        def run(*args: Any) -> Any:
            self.in_backward.append(torch._C._current_graph_task_id() != -1)
            return compiled(*args)

        return run


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> _Counting:
    """The compiled layers' backend, in this process (the rank runs in the driver's)."""
    torch._dynamo.reset()
    counter = _Counting()
    real_init = CompiledLayers.__init__

    def counting_init(self: CompiledLayers, decoder: nn.Module, **kwargs: Any) -> None:
        kwargs.pop("backend", None)
        real_init(self, decoder, backend=counter, **kwargs)

    monkeypatch.setattr(CompiledLayers, "__init__", counting_init)
    return counter


class _Run(NamedTuple):
    result: StepsResult
    weights: dict[str, torch.Tensor]
    """The driver's weights after the steps (the ranks' full weights, pulled after every train)."""
    reports: list[dict[str, Any]]
    """Each rank's TrainRank.compile_report() (none for the torch backend)."""


def _run(compile_model: Literal["on", "off"], **overrides: Any) -> _Run:
    """Two steps, by default of one FSDP rank in the driver's process."""
    model, tok = tiny_policy("unit", seed=4)
    config = small_config(
        rollout_batch_size=4,
        n_samples_per_prompt=2,
        global_batch_size=4,  # two optimizer steps per rollout: the second is off-policy
        lr=1e-3,
        rollout_seed=7,
        compile_model=compile_model,
        **({"train_backend": "fsdp"} | overrides),
    )
    with Trainer(config, model=model, tokenizer=tok, reward_model=spread_reward, dataset=DATASET) as t:
        result = step_trainer(t, 2)
        reports: list[dict[str, Any]] = []
        if config.train_backend == "fsdp":
            reports = t.backend.ranks.call("compile_report", [()] * t.backend.world_size)  # type: ignore[attr-defined]
    # The compiled callables are installed only for the trainer's passes (the engine's calls
    # into the driver's module, and the rank's between passes, run the layers eagerly).
    assert not any(report["installed"] for report in reports)
    return _Run(result, {k: v.detach().clone() for k, v in model.state_dict().items()}, reports)


def _assert_same(a: _Run, b: _Run, rel: float = 1e-5, weights_atol: float = 1e-7) -> None:
    assert_same_steps(a.result, b.result, COMPARED, rel=rel, abs_tol=1e-7)
    assert a.result.metrics[0]["train/grad_norm"] > 0.01, "the comparison needs a real gradient"
    for name, value in a.weights.items():
        diff = (b.weights[name] - value).abs().max().item()
        assert torch.allclose(b.weights[name], value, rtol=rel, atol=weights_atol), f"{name}: {diff}"


def test_compiled_layers_train_like_eager_under_fsdp(counting: _Counting) -> None:
    """compile_model='on' with train_backend='fsdp' compiles the decoder layers (the old code
    raised: the sharded model's decoder had no `layers` list) and trains exactly like eager FSDP."""
    eager = _run("off")
    assert counting.compiled == 0
    compiled = _run("on")
    assert counting.compiled > 0 and len(counting.in_backward) > 0
    assert compiled.reports[0]["compiled"]
    _assert_same(eager, compiled)


def test_checkpointed_packed_layers_recompute_compiled_under_fsdp(counting: _Counting) -> None:
    """gradient_checkpointing and packing with the compiled layers on an FSDP rank: the backward's
    recompute calls the compiled layers (FSDP2's hooks run again inside the checkpoint and find
    the layer's parameters gathered), and the run matches eager FSDP."""
    features = {"gradient_checkpointing": True, "pack_sequences": "on"}
    eager = _run("off", **features)
    _run("on", train_backend="torch", **features)
    torch_graphs, counting.compiled = counting.compiled, 0
    torch._dynamo.reset()
    compiled = _run("on", **features)
    assert any(counting.in_backward), "the checkpoint recompute ran the layers eagerly"
    assert not all(counting.in_backward)
    # At most one graph more than the torch backend's run: the recompute's input, no view of
    # FSDP's pre-forward output there, may get its own.
    assert 0 < counting.compiled <= torch_graphs + 1, (counting.compiled, torch_graphs)
    _assert_same(eager, compiled)


def test_a_compiler_failure_under_fsdp_falls_back_to_eager(
    counting: _Counting, caplog: pytest.LogCaptureFixture
) -> None:
    """The compiler rejects the layers on the rank's first pass: the warning, then the run goes
    on eagerly (FSDP2's state reset by the failed forward) and trains like eager FSDP, with the
    model's own gradient checkpointing switched on."""
    eager = _run("off", gradient_checkpointing=True)
    counting.fail = True
    with caplog.at_level("WARNING"):
        fallen_back = _run("on", gradient_checkpointing=True)
    assert "torch.compile failed" in caplog.text
    assert counting.compiled == 0 and not fallen_back.reports[0]["compiled"]
    _assert_same(eager, fallen_back)


@pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("clang++") is None,
    reason="inductor on the CPU needs a C++ compiler",
)
def test_two_compiled_ranks_match_one_eager_process() -> None:
    """Two CPU rank processes over gloo, each compiling its layers with inductor (the default
    backend; the layers' parameters all-gathered from two shards), train like one eager process
    with the torch backend. About 20 s with inductor's cache warm, a minute cold."""
    eager = _run("off", train_backend="torch")
    two = _run("on", actor_num_gpus_per_node=2, distributed_launcher="processes")
    assert all(report["compiled"] and report["graphs"] > 0 for report in two.reports), two.reports
    # Inductor's fp32 kernels sum in another order than eager: 3.4e-7 apart at most after the two
    # Adam steps (two eager ranks: 1.1e-7), on weights of about 0.05.
    _assert_same(eager, two, rel=1e-4, weights_atol=1e-6)
