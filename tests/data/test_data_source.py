"""Serving prompt groups: order, epochs, shuffle, indices, buffer, state and resume."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerFast

from miles_sdk.config import Config, ConfigError
from miles_sdk.data import (
    BufferGroupError,
    DataSourceStateError,
    PromptDataset,
    RolloutDataSource,
    RolloutDataSourceWithBuffer,
    num_rollout_for_epochs,
    pop_first,
)
from miles_sdk.data.source import state_path
from miles_sdk.hooks import DataSource, DataSourceFactory
from miles_sdk.types import Sample

ROWS = [{"input": f"p{i}", "label": str(i), "metadata": {"id": i}} for i in range(5)]


def cfg(**kw: Any) -> Config:
    base: dict[str, Any] = {"label_key": "label", "rollout_batch_size": 2, "n_samples_per_prompt": 2}
    base.update(kw)
    return Config(**base)


def ids(groups: list[list[Sample]]) -> list[int]:
    """The dataset row id of each group (checking all samples of a group agree)."""
    out = []
    for g in groups:
        assert len({s.metadata["id"] for s in g}) == 1
        out.append(g[0].metadata["id"])
    return out


def test_protocols_are_satisfied() -> None:
    factory: DataSourceFactory = RolloutDataSourceWithBuffer  # type-checked by mypy
    plain: DataSourceFactory = RolloutDataSource
    assert isinstance(RolloutDataSourceWithBuffer(cfg(), dataset=ROWS), DataSource)
    assert isinstance(RolloutDataSource(cfg(), dataset=ROWS), DataSource)
    assert factory is not plain


def test_groups_indices_labels_and_deep_copies() -> None:
    src = RolloutDataSource(cfg(n_samples_per_prompt=3), dataset=ROWS)
    groups = src.get_samples(2) + src.get_samples(1)
    assert ids(groups) == [0, 1, 2]
    assert [[s.group_index for s in g] for g in groups] == [[0, 0, 0], [1, 1, 1], [2, 2, 2]]
    assert [s.index for g in groups for s in g] == list(range(9))
    assert [g[0].label for g in groups] == ["0", "1", "2"]
    groups[0][0].metadata["id"] = 99  # samples are independent copies of the prompt
    assert groups[0][1].metadata["id"] == 0 and src.dataset is not None and src.dataset[0].metadata["id"] == 0


def test_sequential_reads_wrap_and_count_epochs() -> None:
    src = RolloutDataSource(cfg(n_samples_per_prompt=1), dataset=ROWS)
    assert src.dataset_size == 5 and src.epoch == 0
    assert ids(src.get_samples(3)) == [0, 1, 2]
    assert ids(src.get_samples(2)) == [3, 4] and src.epoch == 0  # exact end: wrap happens lazily
    assert ids(src.get_samples(4)) == [0, 1, 2, 3] and src.epoch == 1
    assert ids(src.get_samples(12)) == [4, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0] and src.epoch == 4
    assert src.get_samples(0) == []


def expected_order(seed: int, epoch: int, n: int) -> list[int]:
    order = list(range(n))
    random.Random(seed + epoch).shuffle(order)
    return order


def test_shuffle_per_epoch_with_seed_plus_epoch() -> None:
    src = RolloutDataSource(cfg(n_samples_per_prompt=1, rollout_shuffle=True, rollout_seed=7), dataset=ROWS)
    epoch0, epoch1, epoch2 = ids(src.get_samples(5)), ids(src.get_samples(5)), ids(src.get_samples(5))
    assert epoch0 == expected_order(7, 0, 5)
    assert epoch1 == expected_order(7, 1, 5)
    assert epoch2 == expected_order(7, 2, 5)
    assert sorted(epoch0) == sorted(epoch1) == list(range(5))
    again = RolloutDataSource(cfg(n_samples_per_prompt=1, rollout_shuffle=True, rollout_seed=7), dataset=ROWS)
    assert ids(again.get_samples(15)) == epoch0 + epoch1 + epoch2
    state = random.getstate()
    RolloutDataSource(cfg(rollout_shuffle=True), dataset=ROWS).get_samples(9)
    assert random.getstate() == state  # the global RNG is left alone


def test_prompt_data_path_and_prompt_dataset_inputs(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    src = RolloutDataSourceWithBuffer(cfg(prompt_data=f"{path}@[1:3]"))
    assert ids(src.get_samples(3)) == [1, 2, 1]
    ready = PromptDataset(ROWS[:2])
    assert RolloutDataSource(cfg(), dataset=ready).dataset is ready


def test_no_global_dataset_serves_empty_samples_and_missing_data_errors() -> None:
    src = RolloutDataSource(cfg(rollout_global_dataset=False))
    groups = src.get_samples(2)
    assert [[(s.prompt, s.index) for s in g] for g in groups] == [[("", 0), ("", 1)], [("", 2), ("", 3)]]
    with pytest.raises(ConfigError, match="set prompt_data"):
        RolloutDataSource(cfg())
    with pytest.raises(ConfigError, match="hf_checkpoint"):
        RolloutDataSource(cfg(apply_chat_template=True), dataset=ROWS)


def test_read_only_source_rejects_add_samples() -> None:
    src = RolloutDataSource(cfg(), dataset=ROWS)
    with pytest.raises(RuntimeError, match="read-only"):
        src.add_samples(src.get_samples(1))
    assert src.get_buffer_length() is None


# -- buffer ------------------------------------------------------------------------------------


def test_buffer_served_first_fifo_then_dataset() -> None:
    src = RolloutDataSourceWithBuffer(cfg(), dataset=ROWS)
    first = src.get_samples(3)
    src.add_samples([first[2], first[0]])
    assert src.get_buffer_length() == 2
    served = src.get_samples(3)
    assert served[0] is first[2] and served[1] is first[0]
    assert ids(served) == [2, 0, 3]
    assert served[2][0].group_index == 3  # new groups continue the index sequence
    assert src.get_buffer_length() == 0


def test_pop_first_takes_and_removes() -> None:
    a, b, c = [Sample(index=0)], [Sample(index=1)], [Sample(index=2)]
    buffer = [a, b, c]
    assert pop_first(cfg(), None, buffer, 2) == [a, b]
    assert buffer == [c]
    assert pop_first(cfg(), None, buffer, 5) == [c] and buffer == []


def test_custom_buffer_filter_is_used() -> None:
    calls: list[tuple[int | None, int]] = []

    def newest_first(
        args: Config, rollout_id: int | None, buffer: list[list[Sample]], n: int
    ) -> list[list[Sample]]:
        calls.append((rollout_id, n))
        taken = buffer[::-1][:n]
        for g in taken:
            buffer.remove(g)
        return taken

    src = RolloutDataSourceWithBuffer(cfg(), dataset=ROWS, buffer_filter=newest_first)
    groups = src.get_samples(3)
    src.add_samples(groups)
    assert ids(src.get_samples(2)) == [2, 1]
    assert calls == [(None, 2)]
    assert src.get_buffer_length() == 1


def test_buffer_filter_from_config_path() -> None:
    src = RolloutDataSourceWithBuffer(cfg(buffer_filter_path="miles_sdk.data.buffer.pop_first"), dataset=ROWS)
    assert src.buffer_filter is pop_first


def test_buffer_filter_that_does_not_remove_is_an_error() -> None:
    def peek(args: Config, rollout_id: int | None, buffer: list[list[Sample]], n: int) -> list[list[Sample]]:
        return buffer[:n]

    src = RolloutDataSourceWithBuffer(cfg(), dataset=ROWS, buffer_filter=peek)
    src.add_samples(src.get_samples(1))
    with pytest.raises(BufferGroupError, match="peek: it must remove the groups it returns"):
        src.get_samples(1)


def test_add_samples_requires_groups_of_n() -> None:
    src = RolloutDataSourceWithBuffer(cfg(n_samples_per_prompt=2), dataset=ROWS)
    g = src.get_samples(1)[0]
    with pytest.raises(BufferGroupError, match=r"group 1 has 1 samples; .*n_samples_per_prompt=2"):
        src.add_samples([g, g[:1]])
    with pytest.raises(BufferGroupError, match="group 0 is a Sample"):
        src.add_samples(g)  # type: ignore[arg-type]  # a flat list, a common mistake
    assert src.get_buffer_length() == 0  # nothing half-added
    src.add_samples([])
    assert src.get_buffer_length() == 0


# -- state and resume --------------------------------------------------------------------------


def served_ids(groups: list[list[Sample]]) -> list[tuple[int, int]]:
    out = []
    for g in groups:
        assert g[0].group_index is not None
        out.append((g[0].metadata["id"], g[0].group_index))
    return out


@pytest.mark.parametrize("shuffle", [False, True])
def test_resume_loses_and_repeats_nothing(tmp_path: Path, shuffle: bool) -> None:
    args = cfg(rollout_shuffle=shuffle, save=str(tmp_path), load=str(tmp_path))

    # Reference: an uninterrupted run serving 6 steps of 2 groups, with a partial-rollout style
    # return of one group to the buffer after step 2.
    def run(resume_after: int | None) -> list[tuple[int, int]]:
        src = RolloutDataSourceWithBuffer(args, dataset=ROWS)
        log: list[tuple[int, int]] = []
        for step in range(6):
            groups = src.get_samples(2)
            if step == 2:
                src.add_samples(groups[1:])  # unfinished: back to the buffer
                groups = groups[:1]
            log += served_ids(groups)
            if step == resume_after:
                src.save(step)
                src = RolloutDataSourceWithBuffer(args, dataset=ROWS)
                src.load()  # latest
        return log

    straight = run(None)
    # Every group is served exactly once: the buffered one (group 5) at step 3, after its return.
    assert sorted(gi for _, gi in straight) == list(range(11))
    if not shuffle:
        assert straight == [(gi % 5, gi) for gi in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]
    for k in (1, 2, 3):  # resuming after the return (k=2) must keep the buffered group
        assert run(k) == straight


def test_state_dict_roundtrip_with_buffer() -> None:
    args = cfg(rollout_shuffle=True)
    src = RolloutDataSourceWithBuffer(args, dataset=ROWS)
    groups = src.get_samples(4)
    groups[0][0].response, groups[0][0].tokens, groups[0][0].response_length = "partial", [1, 2, 3], 2
    groups[0][0].status = Sample.Status.ABORTED
    src.add_samples(groups[:1])
    state = src.state_dict()
    json.dumps(state)  # plain values only
    twin = RolloutDataSourceWithBuffer(args, dataset=ROWS)
    twin.load_state_dict(state)
    assert twin.buffer == src.buffer and twin.buffer[0] is not src.buffer[0]
    assert (twin.epoch, twin.sample_offset, twin.sample_index) == (
        src.epoch,
        src.sample_offset,
        src.sample_index,
    )
    assert served_ids(twin.get_samples(5)) == served_ids(src.get_samples(5))


def test_save_uses_miles_layout_and_reads_miles_files(tmp_path: Path) -> None:
    args = cfg(save=str(tmp_path), load=str(tmp_path))
    src = RolloutDataSourceWithBuffer(args, dataset=ROWS)
    src.get_samples(3)
    src.save(4)
    assert (tmp_path / "rollout" / "global_dataset_state_dict_4.pt").exists()
    # A state file as Miles writes it: no buffer, no dataset_size.
    miles_state = {
        "sample_offset": 1,
        "epoch_id": 2,
        "sample_group_index": 11,
        "sample_index": 22,
        "metadata": {},
    }
    torch.save(miles_state, state_path(str(tmp_path), 9))
    fresh = RolloutDataSourceWithBuffer(args, dataset=ROWS)
    fresh.load()  # picks 9, the latest
    assert (fresh.sample_offset, fresh.epoch, fresh.sample_group_index, fresh.sample_index) == (1, 2, 11, 22)
    fresh.load(4)
    assert (fresh.sample_offset, fresh.sample_group_index) == (3, 3)


def test_load_without_state_starts_fresh_and_save_needs_dir(tmp_path: Path) -> None:
    src = RolloutDataSourceWithBuffer(cfg(load=str(tmp_path)), dataset=ROWS)
    src.load()
    src.load(3)
    assert src.sample_offset == 0
    RolloutDataSourceWithBuffer(cfg(), dataset=ROWS).load()  # no load dir: nothing to do
    with pytest.raises(DataSourceStateError, match="set save"):
        src.save(1)


def test_bad_state_is_rejected(tmp_path: Path) -> None:
    src = RolloutDataSourceWithBuffer(cfg(), dataset=ROWS)
    with pytest.raises(DataSourceStateError, match="'epoch_id' must be an int"):
        src.load_state_dict({"epoch_id": -1})
    with pytest.raises(DataSourceStateError, match="sample_offset=9 is past the end"):
        src.load_state_dict({"sample_offset": 9})
    with pytest.raises(BufferGroupError, match="group 0 has 1 samples"):
        src.load_state_dict({"buffer": [[Sample().to_dict()]]})
    path = state_path(str(tmp_path), 0)
    Path(path).parent.mkdir(parents=True)
    Path(path).write_text("garbage")
    with pytest.raises(DataSourceStateError, match="cannot read data-source state"):
        RolloutDataSourceWithBuffer(cfg(load=str(tmp_path)), dataset=ROWS).load(0)


# -- num_epoch -> num_rollout ------------------------------------------------------------------


def test_num_rollout_for_epochs() -> None:
    assert num_rollout_for_epochs(cfg(num_epoch=3, rollout_batch_size=4), 10) == 6  # 10 // 4 = 2 per epoch
    assert num_rollout_for_epochs(cfg(num_rollout=5, num_epoch=3), 10) == 5
    with pytest.raises(ConfigError, match="set num_rollout"):
        num_rollout_for_epochs(cfg(), 10)
    with pytest.raises(ConfigError, match="gives no rollout steps"):
        num_rollout_for_epochs(cfg(num_epoch=2, rollout_batch_size=8), 5)


# -- properties --------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(1, 7),
    requests=st.lists(st.integers(0, 9), min_size=1, max_size=8),
    shuffle=st.booleans(),
    seed=st.integers(0, 1000),
    cut=st.integers(0, 8),
)
def test_every_epoch_is_a_permutation_and_resume_anywhere_is_seamless(
    size: int, requests: list[int], shuffle: bool, seed: int, cut: int
) -> None:
    rows = [{"input": f"p{i}", "metadata": {"id": i}} for i in range(size)]
    args = Config(n_samples_per_prompt=1, rollout_batch_size=1, rollout_shuffle=shuffle, rollout_seed=seed)
    src = RolloutDataSourceWithBuffer(args, dataset=rows)
    straight = [i for n in requests for i in ids(src.get_samples(n))]
    for start in range(0, len(straight), size):
        chunk = straight[start : start + size]
        assert len(set(chunk)) == len(chunk)  # no prompt twice within an epoch
        if len(chunk) == size:
            assert sorted(chunk) == list(range(size))
    resumed_src = RolloutDataSourceWithBuffer(args, dataset=rows)
    resumed: list[int] = []
    for step, n in enumerate(requests):
        if step == cut:
            state = resumed_src.state_dict()
            resumed_src = RolloutDataSourceWithBuffer(args, dataset=rows)
            resumed_src.load_state_dict(state)
        resumed += ids(resumed_src.get_samples(n))
    assert resumed == straight


def test_factory_shape_loads_the_tokenizer_from_hf_checkpoint(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    tiny_tokenizer.save_pretrained(tmp_path / "ckpt")
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    args = cfg(hf_checkpoint=str(tmp_path / "ckpt"), prompt_data=str(path), apply_chat_template=True)
    factory: DataSourceFactory = RolloutDataSourceWithBuffer
    src = factory(args)
    (group,) = src.get_samples(1)
    assert group[0].prompt == "<|im_start|>user\np0<|im_end|>\n<|im_start|>assistant\n"
