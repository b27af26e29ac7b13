"""Hook files written in Miles's newer calling convention, importing miles.* as Miles users do."""

from miles.rollout.base_types import (
    GenerateFnInput,
    GenerateFnOutput,
    RolloutFnConstructorInput,
    RolloutFnTrainInput,
    RolloutFnTrainOutput,
)

TOOLS = [{"type": "function", "function": {"name": "add"}}]
CALLS = []
ROLLOUT_CALLS = []
ROLLOUT_INSTANCES = []


async def execute_tool(name, arguments):
    CALLS.append((name, arguments))
    return str(arguments["a"] + arguments["b"])


async def generate(input: GenerateFnInput) -> GenerateFnOutput:
    sample = input.sample
    sample.metadata["seen_args"] = input.args.n_samples_per_prompt
    sample.metadata["evaluation"] = input.evaluation
    from miles.rollout.generate_hub.single_turn import generate as single

    return await single(input)


class Rollout:
    def __init__(self, input: RolloutFnConstructorInput):
        self.data_source = input.data_source
        ROLLOUT_INSTANCES.append(self)

    def __call__(self, input: RolloutFnTrainInput) -> RolloutFnTrainOutput:
        ROLLOUT_CALLS.append((input.rollout_id, input.weight_version, input.evaluation))
        return RolloutFnTrainOutput(samples=self.data_source.get_samples(1))
