"""Shim of ``megatron`` for Miles hook files run without megatron-core: only ``megatron.core.mpu``
(and its other name ``megatron.core.parallel_state``), answering with this process's ranks."""
