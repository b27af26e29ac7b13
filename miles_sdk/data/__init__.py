"""The data stage (loop step 1): prompt datasets, the data source with its buffer, eval datasets.

- :class:`RolloutDataSourceWithBuffer` (the default ``DataSource``) and :class:`RolloutDataSource`
- :func:`pop_first`, the stock ``BufferFilterFn``
- :class:`PromptDataset`: .jsonl / .parquet / ``path@[a:b]`` / row dicts / ``datasets.Dataset``
- :func:`load_eval_datasets` -> ``{name: EvalDataset}``
- :func:`num_rollout_for_epochs`: ``num_epoch`` -> ``num_rollout``
"""

from miles_sdk.data.buffer import BufferGroupError, check_groups, pop_first
from miles_sdk.data.dataset import (
    DataInput,
    DatasetError,
    HFDatasetLike,
    PromptDataset,
    parse_data_path,
    read_rows,
)
from miles_sdk.data.eval import EvalConfigError, EvalDataset, EvalDatasetSettings, load_eval_datasets
from miles_sdk.data.source import (
    DataSourceStateError,
    RolloutDataSource,
    RolloutDataSourceWithBuffer,
    load_tokenizer,
    num_rollout_for_epochs,
)
from miles_sdk.data.templates import PromptError, render_chat_prompt

__all__ = [
    "BufferGroupError",
    "DataInput",
    "DataSourceStateError",
    "DatasetError",
    "EvalConfigError",
    "EvalDataset",
    "EvalDatasetSettings",
    "HFDatasetLike",
    "PromptDataset",
    "PromptError",
    "RolloutDataSource",
    "RolloutDataSourceWithBuffer",
    "check_groups",
    "load_eval_datasets",
    "load_tokenizer",
    "num_rollout_for_epochs",
    "parse_data_path",
    "pop_first",
    "read_rows",
    "render_chat_prompt",
]
