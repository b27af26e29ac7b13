"""Host-side request bookkeeping: chunked acceptance equals token-by-token acceptance."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerFast

from miles_sdk.engines._requests import Batch, Request, parse_sampling_params
from miles_sdk.engines.base import EngineOutput, SamplingParams
from miles_sdk.testing.tiny import tiny_tokenizer

TOK: PreTrainedTokenizerFast = tiny_tokenizer()


def make(params: SamplingParams, prompt_len: int, max_context: int) -> Request:
    loop = asyncio.new_event_loop()
    fut: asyncio.Future[list[EngineOutput]] = loop.create_future()
    loop.close()
    return parse_sampling_params(
        [1] * prompt_len, params, vocab_size=300, eos_ids=frozenset({7}), default_seed=0,
        default_max_new_tokens=128, max_context=max_context, batch=Batch(fut, 1),
    )  # fmt: skip


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(0, 12), min_size=1, max_size=40),
    st.integers(1, 30),
    st.booleans(),
    st.lists(st.integers(0, 12), max_size=2),
    st.integers(1, 16),
    st.integers(2, 80),
)
def test_accept_many_equals_accept_one_by_one(
    tokens: list[int], budget: int, ignore_eos: bool, stop_ids: list[int], chunk: int, max_context: int
) -> None:
    params: SamplingParams = {"max_new_tokens": budget, "ignore_eos": ignore_eos, "stop_token_ids": stop_ids}
    one, many = make(params, 1, max_context), make(params, 1, max_context)
    r_one = None
    for t in tokens:
        r_one = one.accept(t, float(t), TOK)
        if r_one is not None:
            break
    r_many = None
    for start in range(0, len(tokens), chunk):
        part = tokens[start : start + chunk]
        r_many = many.accept_many(part, [float(t) for t in part], TOK)
        if r_many is not None:
            break
    assert (r_one, one.tokens, one.log_probs) == (r_many, many.tokens, many.log_probs)


@pytest.mark.parametrize("skip", [True, False])
def test_decode_texts_equals_tokenizer_decode(skip: bool) -> None:
    import random

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from miles_sdk.engines._requests import decode_texts
    from miles_sdk.testing import tiny_tokenizer

    words = Tokenizer(models.WordLevel(vocab={f"w{i}": i for i in range(50)}, unk_token="w0"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    words.decoder = decoders.WordPiece(prefix="##")
    word_tok = PreTrainedTokenizerFast(tokenizer_object=words, eos_token="w49", pad_token="w48")
    tokenizers = [tiny_tokenizer(), word_tok]
    cleaned = PreTrainedTokenizerFast(
        tokenizer_object=words, eos_token="w49", clean_up_tokenization_spaces=True
    )
    tokenizers.append(cleaned)  # takes the per-sequence path; same text either way
    rng = random.Random(0)
    for tok in tokenizers:
        n = len(tok)
        seqs = [[rng.randrange(n) for _ in range(rng.randrange(0, 40))] for _ in range(9)]
        seqs.append([tok.eos_token_id or 0] * 3)
        assert decode_texts(tok, seqs, skip) == [tok.decode(s, skip_special_tokens=skip) for s in seqs]
