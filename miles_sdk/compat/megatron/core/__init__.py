"""Shim of ``megatron.core``: ``mpu`` / ``parallel_state`` only (see miles_sdk.compat.megatron)."""

from miles_sdk.compat.megatron.core import mpu as mpu
from miles_sdk.compat.megatron.core import mpu as parallel_state

__all__ = ["mpu", "parallel_state"]
