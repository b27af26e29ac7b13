"""The graph-replayed prefill's padding (rows into a scratch slot, columns past the prompts) gives
the same logits and KV as the exact-shape prefill. The padded inputs are run eagerly here on the
CPU; the GPU replays the same body from a CUDA graph (test_fast_pipeline's CUDA test covers it
end to end)."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerFast

from miles_sdk.engines._fast import FastRunner
from miles_sdk.engines._graphs import PREFILL_GRAPH_TOKENS, PrefillGraphs

from .conftest import build_model


def test_padded_prefill_matches_the_exact_shape(tok: PreTrainedTokenizerFast) -> None:
    model = build_model(tok, seed=2)
    runner = FastRunner(model, torch.device("cpu"), max_batch_size=6, max_seq_len=200, cuda_graphs=False)
    prompts = [[5, 9, 3, 7, 11], [4, 4, 8], [12, 6, 2, 9, 9, 9, 1]]
    leads = [4, 0, 2]
    graphs = PrefillGraphs(runner._prefill_body, torch.device("cpu"), scratch_slot=6, max_width=200)
    shape = graphs.shape(prompts)
    assert shape == (4, 64)  # 3 prompts -> 4 rows; 7 tokens -> one 64-wide column block
    with torch.inference_mode():
        exact_ids, exact_leads, exact_last = graphs.padded_inputs(prompts, leads, (3, 7))
        exact = runner._prefill_body(exact_ids, 7, exact_leads, exact_last)
        k_exact, v_exact = runner._k_all.clone(), runner._v_all.clone()
        runner._k_all.zero_()
        runner._v_all.zero_()
        ids, padded_leads, last = graphs.padded_inputs(prompts, leads, shape)
        assert padded_leads.tolist() == [4, 0, 2, 6]  # the padding row prefills the scratch slot
        padded = runner._prefill_body(ids, 64, padded_leads, last)
    torch.testing.assert_close(padded[:3], exact, rtol=1e-5, atol=1e-5)
    for slot, p in zip(leads, prompts, strict=True):
        n = len(p)
        torch.testing.assert_close(
            runner._k_all[:, slot, :, :n], k_exact[:, slot, :, :n], rtol=1e-5, atol=1e-5
        )
        torch.testing.assert_close(
            runner._v_all[:, slot, :, :n], v_exact[:, slot, :, :n], rtol=1e-5, atol=1e-5
        )
    untouched = [s for s in range(6) if s not in leads]
    assert not runner._k_all[:, untouched].any()  # no other request's slot is written


def test_large_or_too_many_shapes_run_eagerly(tok: PreTrainedTokenizerFast) -> None:
    graphs = PrefillGraphs(lambda *a: torch.zeros(1), torch.device("cpu"), scratch_slot=0, max_width=4096)
    assert graphs.shape([[1] * 100] * 16) == (16, 128)
    assert graphs.shape([[1] * 1000] * 16) is None  # 16 x 1024 > PREFILL_GRAPH_TOKENS
    assert 16 * 1024 > PREFILL_GRAPH_TOKENS
    assert graphs.shape([[1] * 30] * 5) == (8, 64)
