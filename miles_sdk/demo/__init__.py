"""The embedded demo task (single-digit addition) and its runner."""

from miles_sdk.demo.run import demo_config, main, run_demo
from miles_sdk.demo.task import addition_reward, make_addition_dataset

__all__ = ["addition_reward", "demo_config", "main", "make_addition_dataset", "run_demo"]
