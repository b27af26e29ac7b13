"""Scale-out: training ranks sharded with FSDP2, started in this process, as local processes, or as
Ray actors. The driver (a script or a notebook) keeps the Trainer and the hooks; only what must run
next to the model goes to the ranks."""

from miles_sdk.distributed.world import WorldPlan, plan_world

__all__ = ["WorldPlan", "plan_world"]
