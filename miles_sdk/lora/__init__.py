"""LoRA with Miles's flags, through peft (docs/lora.md).

peft is imported when a LoRA policy is built (``lora_rank > 0``), not with this package:
install it with ``pip install 'miles_sdk[lora]'``.
"""

from miles_sdk.lora.adapter import ALL_LINEAR, LoraPolicy, apply_lora, target_module_names
from miles_sdk.lora.base import TrainableAdapter

__all__ = ["ALL_LINEAR", "LoraPolicy", "TrainableAdapter", "apply_lora", "target_module_names"]
