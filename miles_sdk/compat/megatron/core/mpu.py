"""Shim of ``megatron.core.mpu`` (``megatron.core.parallel_state``): this process's ranks.

Hook files ask Megatron for their data-parallel rank and size (Miles's Dr.GRPO reducer asserts
``get_context_parallel_world_size() == 1``). The SDK's backends shard over data-parallel ranks
only, so the data-parallel group is the default ``torch.distributed`` group (one rank without
one), and tensor, pipeline, context and expert parallel groups have size 1 and rank 0.
"""

from __future__ import annotations

from typing import Any

from miles_sdk.compat.miles.backends.training_utils.parallel import data_parallel_group

__all__ = [
    "get_context_parallel_group",
    "get_context_parallel_rank",
    "get_context_parallel_world_size",
    "get_data_parallel_group",
    "get_data_parallel_rank",
    "get_data_parallel_world_size",
    "get_expert_model_parallel_rank",
    "get_expert_model_parallel_world_size",
    "get_pipeline_model_parallel_rank",
    "get_pipeline_model_parallel_world_size",
    "get_tensor_model_parallel_group",
    "get_tensor_model_parallel_rank",
    "get_tensor_model_parallel_world_size",
    "is_pipeline_first_stage",
    "is_pipeline_last_stage",
    "model_parallel_is_initialized",
]


def get_data_parallel_rank(with_context_parallel: bool = False, partial_data_parallel: bool = False) -> int:
    return data_parallel_group().rank


def get_data_parallel_world_size(with_context_parallel: bool = False, partial_data_parallel: bool = False) -> int:
    return data_parallel_group().size


def get_data_parallel_group(with_context_parallel: bool = False, partial_data_parallel: bool = False) -> Any:
    return data_parallel_group().group


def get_context_parallel_world_size() -> int:
    return 1


def get_context_parallel_rank() -> int:
    return 0


def get_context_parallel_group(check_initialized: bool = True) -> Any:
    return None


def get_tensor_model_parallel_world_size() -> int:
    return 1


def get_tensor_model_parallel_rank() -> int:
    return 0


def get_tensor_model_parallel_group(check_initialized: bool = True) -> Any:
    return None


def get_pipeline_model_parallel_world_size() -> int:
    return 1


def get_pipeline_model_parallel_rank() -> int:
    return 0


def get_expert_model_parallel_world_size() -> int:
    return 1


def get_expert_model_parallel_rank() -> int:
    return 0


def is_pipeline_first_stage(ignore_virtual: bool = False) -> bool:
    return True


def is_pipeline_last_stage(ignore_virtual: bool = False) -> bool:
    return True


def model_parallel_is_initialized() -> bool:
    return True
