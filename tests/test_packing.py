"""pack_sequences: packed (padding-free) trainer forwards equal the right-padded ones."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, Literal

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM

from miles_sdk import Config, Sample, Trainer
from miles_sdk.backends import _compile, _varlen
from miles_sdk.backends._batching import micro_batch
from miles_sdk.backends._compile import CompiledLayers
from miles_sdk.backends.critic import Critic
from miles_sdk.backends.torch_backend import TorchBackend
from miles_sdk.stages import MicroBatch, PolicyOutputs, TrainBatch
from miles_sdk.testing import small_config, tiny_policy
from miles_sdk.types import TrainData

Mode = Literal["auto", "on", "off"]
VOCAB = 64
LENGTHS = [5, 17, 9, 4, 1 + 3]
RESPONSES = [2, 10, 4, 3, 1]


def _qwen2(seed: int = 0, **overrides: Any) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # GQA
        max_position_embeddings=64,
        **overrides,
    )
    return Qwen2ForCausalLM(config).float()


def _llama(seed: int = 0) -> nn.Module:
    model, _ = tiny_policy("unit", seed=seed)
    return model.float()


MODELS: dict[str, Callable[[], nn.Module]] = {"qwen2": _qwen2, "llama": _llama}


def _tokens(lengths: list[int], seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in lengths]


def _pair(build: Callable[[], nn.Module], **cfg: Any) -> tuple[TorchBackend, TorchBackend]:
    """A padded and a packed backend over two identical models."""
    return tuple(  # type: ignore[return-value]
        TorchBackend(small_config(pack_sequences=mode, **cfg), build()) for mode in ("off", "on")
    )


@pytest.mark.parametrize("name", MODELS)
def test_packed_hidden_log_probs_and_entropy_match_padded(name: str) -> None:
    padded, packed = _pair(MODELS[name])
    assert packed._pack and not padded._pack
    tokens = _tokens(LENGTHS)
    h_pad = padded._forward_hidden(padded.model, tokens)
    h_pack = packed._forward_hidden(packed.model, tokens)
    assert h_pack.flat.shape[0] == sum(LENGTHS)  # no padding rows
    for i, n in enumerate(LENGTHS):
        torch.testing.assert_close(h_pack.rows(i, 0, n), h_pad.rows(i, 0, n), atol=1e-5, rtol=1e-5)
    lp_pad, ent_pad = padded._response_log_probs(padded.model, tokens, RESPONSES, with_entropy=True)
    lp_pack, ent_pack = packed._response_log_probs(packed.model, tokens, RESPONSES, with_entropy=True)
    assert ent_pad is not None and ent_pack is not None
    for a, b in zip([*lp_pad, *ent_pad], [*lp_pack, *ent_pack], strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_equal_lengths_keep_the_padded_forward() -> None:
    """Nothing to remove: the padded forward (SDPA's fused kernel) runs even with packing on."""
    _, packed = _pair(_qwen2)
    same = _tokens([6, 6, 6])
    assert packed._pack and not packed._packs(packed.model, same)
    assert packed._packs(packed.model, _tokens(LENGTHS))
    h = packed._forward_hidden(packed.model, same)
    assert h.flat.shape[0] == 18 and h.starts == [0, 6, 12]
    with packed._train_scope(_scope_of(same)):
        assert packed.model.config._attn_implementation != _varlen.ATTN_IMPLEMENTATION


@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradients_match_padded(checkpointing: bool) -> None:
    tokens = _tokens(LENGTHS)
    grads = []
    for backend in _pair(_qwen2, gradient_checkpointing=checkpointing):
        backend.model.train()
        # The backend's train scope: checkpointing recomputes the layers inside backward.
        with backend._train_scope(_scope_of(tokens)):
            logp, ent = backend._response_log_probs(backend.model, tokens, RESPONSES, with_entropy=True)
            assert ent is not None
            loss = sum((lp * (i + 1)).sum() for i, lp in enumerate(logp)) + torch.cat(ent).mean()
            torch.autograd.backward(loss)
        grads.append([p.grad for p in backend.model.parameters()])
    for a, b in zip(*grads, strict=True):
        assert a is not None and b is not None
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def _train_data(lengths: list[int], responses: list[int]) -> TrainData:
    tokens = _tokens(lengths)
    return {
        "tokens": tokens,
        "response_lengths": responses,
        "loss_masks": [[1] * r for r in responses],
        "rewards": [float(i % 2) for i in range(len(tokens))],
        "raw_reward": [float(i % 2) for i in range(len(tokens))],
        "truncated": [0] * len(tokens),
        "sample_indices": list(range(len(tokens))),
    }


def _rollout(backend: TorchBackend, lengths: list[int], responses: list[int]) -> TrainBatch:
    data = _train_data(lengths, responses)
    return TrainBatch.build(
        data,
        PolicyOutputs(backend.compute_log_probs(data, which="actor")),
        advantages=[torch.linspace(-1, 1, r) for r in responses],
        returns=[torch.linspace(0, 1, r) for r in responses],
    )


def _scope_of(tokens: list[list[int]]) -> MicroBatch:
    """A micro-batch carrying only its token lists (all a train scope reads)."""
    return MicroBatch(tokens=[], token_lists=tokens, response_lengths=[], total_lengths=[], loss_masks=[])


def test_ppo_train_step_and_critic_values_match_padded() -> None:
    padded, packed = _pair(
        _qwen2,
        advantage_estimator="ppo",
        lr=1e-3,
        micro_batch_size=2,
        global_batch_size=4,
        gradient_checkpointing=True,  # recomputes the layers in backward: the scope must hold
    )
    assert padded.critic is not None and packed.critic is not None and packed.critic.pack
    for critic in (padded.critic, packed.critic):  # a non-zero head, so values depend on the body
        nn.init.normal_(critic.model.value_head.weight, generator=torch.Generator().manual_seed(3))
    data = _rollout(padded, LENGTHS[:4], RESPONSES[:4])
    values = [backend.compute_values(_train_data(LENGTHS[:4], RESPONSES[:4])) for backend in (padded, packed)]
    assert values[0] is not None and values[1] is not None
    for a, b in zip(*values, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    data = attrs.evolve(data, values=values[0])
    metrics = [backend.train(0, data) for backend in (padded, packed)]
    assert metrics[0].keys() == metrics[1].keys()
    for key, value in metrics[0].items():
        assert metrics[1][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    params = [[*b.model.parameters(), *b.critic.model.parameters()] for b in (padded, packed) if b.critic]
    for a, b in zip(*params, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_custom_loss_packed_logits_match_padded() -> None:
    padded, packed = _pair(_qwen2)
    data = _rollout(padded, LENGTHS, RESPONSES)
    idx = list(range(len(LENGTHS)))
    logits = [b._packed_logits(micro_batch(data, idx, b.device)) for b in (padded, packed)]
    assert logits[1].shape == (1, sum(LENGTHS), VOCAB)
    torch.testing.assert_close(logits[1], logits[0], atol=1e-5, rtol=1e-5)


def test_attention_implementation_switches_only_for_the_forward() -> None:
    backend = TorchBackend(small_config(pack_sequences="on"), _qwen2())
    config = backend.model.config
    seen: list[str] = []
    layer = backend.model.get_decoder().layers[0]
    layer.register_forward_pre_hook(lambda *_: seen.append(config._attn_implementation))
    backend._forward_hidden(backend.model, _tokens([3, 4]))
    assert seen == [_varlen.ATTN_IMPLEMENTATION]
    assert config._attn_implementation == "sdpa"
    with pytest.raises(IndexError):  # a token outside the vocabulary fails inside the forward
        backend._forward_hidden(backend.model, [[1, 2], [VOCAB + 5]])
    assert config._attn_implementation == "sdpa"
    backend.model(input_ids=torch.tensor([[1, 2, 3]]), attention_mask=torch.tensor([[0, 1, 1]]))
    assert seen[-1] == "sdpa"  # e.g. the engine's generic path, after the trainer's pass


class _Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)

    def forward(self, input_ids: torch.Tensor, **_: Any) -> Any:
        return type("Out", (), {"last_hidden_state": self.embed(input_ids)})()


class _CustomPolicy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = _Decoder()
        self.head = nn.Linear(8, VOCAB, bias=False)

    def get_decoder(self) -> nn.Module:
        return self.body

    def get_output_embeddings(self) -> nn.Linear:
        return self.head


def test_a_model_that_cannot_pack(caplog: pytest.LogCaptureFixture) -> None:
    cuda = torch.device("cuda")  # auto decides by device type; nothing runs on it
    with caplog.at_level(logging.INFO, logger=_varlen.__name__):
        assert not _varlen.packing_enabled("auto", _Decoder(), cuda)
    reason = "its config has no _attn_implementation (not a transformers model)"
    assert [r.getMessage() for r in caplog.records] == [
        f"pack_sequences auto: _Decoder cannot pack ({reason}); padding instead"
    ]
    sliding = _qwen2(use_sliding_window=True, sliding_window=4).get_decoder()
    assert not _varlen.packing_enabled("auto", sliding, cuda)
    with pytest.raises(ValueError, match="pack_sequences='on': _Decoder cannot pack"):
        TorchBackend(small_config(pack_sequences="on"), _CustomPolicy())
    padded = TorchBackend(small_config(pack_sequences="auto"), _CustomPolicy())
    assert not padded._pack
    assert padded._forward_hidden(padded.model, [[1, 2], [3]]).flat.shape == (4, 8)


def test_a_model_whose_packed_forward_crosses_sequences_is_not_packed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A model that passes the class checks but loses the sequence boundaries on the way to its
    attention (simulated: one causal span over the whole packed row) is caught by the test
    forward: auto pads, on raises."""
    per_sequence = _varlen._per_sequence

    def one_span(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, s: float | None
    ) -> torch.Tensor:
        return per_sequence(q, k, v, cu[[0, -1]], s)

    monkeypatch.setattr(_varlen, "_per_sequence", one_span)
    decoder = _qwen2().get_decoder()
    decoder.train()
    with caplog.at_level(logging.INFO, logger=_varlen.__name__):
        assert not _varlen.packing_enabled("auto", decoder, torch.device("cuda"))
    assert "differs from the padded one" in caplog.text
    assert decoder.training  # the test forward ran in eval mode and restored the mode
    assert decoder.config._attn_implementation != _varlen.ATTN_IMPLEMENTATION
    with pytest.raises(ValueError, match="attention crosses sequences"):
        _varlen.packing_enabled("on", decoder, torch.device("cpu"))


async def _alternating_reward(args: Config, sample: Sample) -> float:
    return float((sample.index or 0) % 2)


def test_trainer_steps_match_padded() -> None:
    """Two full steps (the engine generating from the same module between the trainer's passes)."""

    def run(mode: Mode) -> tuple[list[float], torch.Tensor]:
        model, tok = tiny_policy("unit", seed=4)
        cfg = small_config(sglang_enable_deterministic_inference=True, lr=1e-3, pack_sequences=mode)
        rows = [{"input": f"{a}+{b}=", "label": str(a + b)} for a in range(3) for b in range(3)]
        with Trainer(cfg, model=model, tokenizer=tok, dataset=rows, reward_model=_alternating_reward) as t:
            losses = [t.step()["train/loss"] for _ in range(2)]
        return losses, next(model.parameters()).detach().clone()

    padded_losses, padded_weight = run("off")
    packed_losses, packed_weight = run("on")
    assert packed_losses == pytest.approx(padded_losses, rel=1e-4, abs=1e-6)
    torch.testing.assert_close(packed_weight, padded_weight, atol=1e-5, rtol=1e-5)


def test_fp32_critic_pads_under_auto() -> None:
    """No flash kernel for fp32, and the critic runs without autocast: auto pads it."""
    assert not Critic(small_config(advantage_estimator="ppo"), _qwen2(), pack=True).pack
    assert Critic(small_config(advantage_estimator="ppo", pack_sequences="on"), _qwen2(), pack=True).pack


def test_auto_keeps_padding_on_cpu() -> None:
    assert not TorchBackend(small_config(), _qwen2())._pack
    assert _varlen.packing_enabled("auto", _qwen2().get_decoder(), torch.device("cuda"))


def test_attention_refuses_what_it_would_drop() -> None:
    q = torch.zeros(1, 2, 3, 8)
    cu = torch.tensor([0, 3], dtype=torch.int32)
    with pytest.raises(NotImplementedError, match="sliding_window"):
        _varlen._packed_attention(
            nn.Module(), q, q, q, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu, sliding_window=2
        )
    with pytest.raises(RuntimeError, match="without cu_seq_lens"):
        _varlen._packed_attention(nn.Module(), q, q, q, None)


@pytest.mark.parametrize("params", [("window_size", "enable_gqa", "scale"), ("is_causal",)])
def test_varlen_call_across_torch_signatures(
    monkeypatch: pytest.MonkeyPatch, params: tuple[str, ...]
) -> None:
    """The flash path's kwargs, against a stand-in varlen_attn: ``window_size=(-1, 0)`` or
    ``is_causal=True``, and ``enable_gqa`` or repeated KV heads."""
    calls: list[dict[str, Any]] = []

    def fake_varlen(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, _cu: Any, *_: Any, **kw: Any
    ) -> torch.Tensor:
        calls.append(kw)
        assert kw.get("window_size", (-1, 0)) == (-1, 0) and kw.get("is_causal", True)
        return _varlen._per_sequence(q, k, v, cu, kw.get("scale"))

    monkeypatch.setattr(_varlen, "_varlen_attn", fake_varlen)
    monkeypatch.setattr(_varlen, "_VARLEN_PARAMS", frozenset(params))
    monkeypatch.setattr(
        _varlen,
        "_CAUSAL_KWARGS",
        {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True},
    )
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(7, h, 8, generator=g) for h in (4, 2, 2))
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    out = _varlen._flash(q, k, v, cu, cu, 4, 4, 8**-0.5)
    torch.testing.assert_close(out, _varlen._per_sequence(q, k, v, cu, 8**-0.5))
    assert ("enable_gqa" in calls[0]) == ("enable_gqa" in params)


def test_compiled_layers_run_packed(monkeypatch: pytest.MonkeyPatch) -> None:
    torch._dynamo.reset()

    def eager_backend(gm: torch.fx.GraphModule, _: list[Any]) -> Any:
        return gm.forward

    real_init = CompiledLayers.__init__

    def init(self: CompiledLayers, decoder: nn.Module, **_: Any) -> None:
        real_init(self, decoder, backend=eager_backend)

    monkeypatch.setattr(CompiledLayers, "__init__", init)
    monkeypatch.setattr(_compile, "DYNAMIC", True)  # one compile for every layout: a faster test
    padded = TorchBackend(small_config(pack_sequences="off"), _llama())
    packed = TorchBackend(small_config(pack_sequences="on", compile_model="on"), _llama())
    assert packed._compiled is not None
    for lengths in ([5, 3], [4, 6, 2], [7]):  # a changing packed length
        tokens = _tokens(lengths)
        responses = [2] * len(lengths)
        a, _ = padded._response_log_probs(padded.model, tokens, responses, with_entropy=False)
        b, _ = packed._response_log_probs(packed.model, tokens, responses, with_entropy=False)
        torch.testing.assert_close(torch.cat(b), torch.cat(a), atol=1e-5, rtol=1e-5)
    assert packed._compiled.enabled


@functools.cache
def _shared_pair() -> tuple[TorchBackend, TorchBackend]:
    return _pair(_qwen2)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 12), st.integers(1, 12)), min_size=1, max_size=5))
def test_packed_log_probs_equal_padded(shapes: list[tuple[int, int]]) -> None:
    """Any mix of lengths: ``(prompt, response)`` pairs, responses of at most the whole sequence."""
    lengths = [p + r for p, r in shapes]
    responses = [r for _, r in shapes]
    tokens = _tokens(lengths, seed=len(lengths))
    padded, packed = _shared_pair()
    a, _ = padded._response_log_probs(padded.model, tokens, responses, with_entropy=False)
    b, _ = packed._response_log_probs(packed.model, tokens, responses, with_entropy=False)
    torch.testing.assert_close(torch.cat(b), torch.cat(a), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the flash varlen kernel needs CUDA")
def test_flash_probe_passes_under_no_grad(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first packed forward may be a no-grad pass (old log-probs, the test forward of auto);
    the probe's backward must still run, or every packed forward falls back to the loop."""
    monkeypatch.setattr(_varlen, "_probed", False)
    monkeypatch.setattr(_varlen, "_flash_ready", False)
    with torch.no_grad():
        _varlen._probe_flash(torch.device("cuda"))
    assert _varlen._flash_ready
