"""``rm_type=ifbench``: instruction following, checked from the sample's metadata.

``metadata["instruction_id_list"]`` names the instructions (IFEval ids such as
``"punctuation:no_comma"``) and ``metadata["kwargs"]`` holds their arguments: a list aligned
with the ids, or one dict shared by all. ``None`` arguments are dropped, as IFBench does. The
reward is 1.0 when every instruction is followed (IFBench's strict score), else 0.0.

Miles clones the IFBench repository at import time; that cannot work offline, so the common
checks are implemented here (:data:`SUPPORTED_INSTRUCTIONS`). An unknown id is an error naming
it, never a silent 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from miles_sdk.rewards._ifeval_checks import CHECKS

__all__ = ["SUPPORTED_INSTRUCTIONS", "IFBenchError", "ifbench_instructions", "ifbench_reward"]

SUPPORTED_INSTRUCTIONS: frozenset[str] = frozenset(CHECKS)


class IFBenchError(ValueError):
    """Metadata that cannot be checked: no instructions, an unknown id, or bad kwargs."""


def ifbench_instructions(metadata: Mapping[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
    """``(instruction_id, kwargs)`` pairs from the metadata, validated against the known ids."""
    metadata = metadata or {}
    raw_ids = metadata.get("instruction_id_list")
    if not raw_ids:
        raise IFBenchError(
            "ifbench needs metadata['instruction_id_list'] (a non-empty list of instruction ids)"
        )
    ids = [str(i).strip() for i in raw_ids if i is not None and str(i).strip()]
    raw_kwargs = metadata.get("kwargs")
    if isinstance(raw_kwargs, list):
        per_id = [dict(k) if isinstance(k, Mapping) else {} for k in raw_kwargs]
        if len(per_id) != len(ids):
            raise IFBenchError(
                f"ifbench: metadata['kwargs'] has {len(per_id)} entries for {len(ids)} instruction ids"
            )
    elif isinstance(raw_kwargs, Mapping):
        per_id = [dict(raw_kwargs) for _ in ids]
    elif raw_kwargs is None:
        per_id = [{} for _ in ids]
    else:
        raise IFBenchError(
            f"ifbench: metadata['kwargs'] must be a list or dict, got {type(raw_kwargs).__name__}"
        )
    for pos, instruction in enumerate(ids):
        if instruction not in CHECKS:
            raise IFBenchError(
                f"ifbench: unknown instruction id {instruction!r} at metadata['instruction_id_list'][{pos}]; "
                f"supported: {', '.join(sorted(CHECKS))}"
            )
    return [(i, {k: v for k, v in kw.items() if v is not None}) for i, kw in zip(ids, per_id, strict=True)]


def ifbench_reward(response: str, metadata: Mapping[str, Any] | None) -> float:
    """1.0 when ``response`` follows every instruction in ``metadata``, else 0.0."""
    for instruction, kwargs in ifbench_instructions(metadata):
        try:
            followed = CHECKS[instruction](response, kwargs)
        except (ValueError, TypeError) as exc:
            raise IFBenchError(f"ifbench: instruction {instruction!r}: {exc}") from exc
        if not followed:
            return 0.0
    return 1.0
