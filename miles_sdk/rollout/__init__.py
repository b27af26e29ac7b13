"""Stage 2 of the loop: the default rollout (generate -> score -> filter -> over-sample), single-turn
generation on the inference engine, the eval rollout, stock dynamic filters and debug dumps.

The Trainer installs a :class:`RolloutContext` (engine, tokenizer, hooks) around each rollout;
in a test, install one yourself with :func:`use_rollout_context`.
"""

from miles_sdk.rollout.context import (
    EvalDatasetLike,
    GenerateFnLoader,
    RolloutContext,
    RolloutContextError,
    TokenizerLike,
    get_rollout_context,
    use_rollout_context,
)
from miles_sdk.rollout.debug import load_rollout_data, rollout_data_path, save_rollout_data
from miles_sdk.rollout.default import RolloutError, generate_rollout, train_rollout
from miles_sdk.rollout.eval import eval_rollout, eval_sampling_params
from miles_sdk.rollout.filters import call_dynamic_filter, check_no_aborted, check_reward_nonzero_std
from miles_sdk.rollout.generate import (
    append_tokens,
    extract_tool_call,
    generate_with_engine,
    sampling_params_from_args,
    status_from_finish_reason,
    stop_at_markers,
    tokenize_prompt,
)

__all__ = [
    "EvalDatasetLike",
    "GenerateFnLoader",
    "RolloutContext",
    "RolloutContextError",
    "RolloutError",
    "TokenizerLike",
    "append_tokens",
    "call_dynamic_filter",
    "check_no_aborted",
    "check_reward_nonzero_std",
    "eval_rollout",
    "eval_sampling_params",
    "extract_tool_call",
    "generate_rollout",
    "generate_with_engine",
    "get_rollout_context",
    "load_rollout_data",
    "rollout_data_path",
    "sampling_params_from_args",
    "save_rollout_data",
    "status_from_finish_reason",
    "stop_at_markers",
    "tokenize_prompt",
    "train_rollout",
    "use_rollout_context",
]
