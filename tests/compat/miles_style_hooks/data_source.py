# A Miles-style data source subclassing miles.rollout.data_source.DataSource.
import copy

from miles.rollout.data_source import DataSource
from miles.utils.types import Sample


class FixedPrompts(DataSource):
    def __init__(self, args):
        self.args = args
        self.prompts = [(f"{a}+{b}=", str(a + b)) for a in range(3) for b in range(3)]
        self.offset = 0
        self.buffer = []
        self.index = 0

    def get_samples(self, num_samples):
        out = self.buffer[:num_samples]
        self.buffer = self.buffer[num_samples:]
        while len(out) < num_samples:
            prompt, label = self.prompts[self.offset % len(self.prompts)]
            self.offset += 1
            group = []
            for _ in range(self.args.n_samples_per_prompt):
                group.append(Sample(prompt=prompt, label=label, index=self.index, group_index=self.offset))
                self.index += 1
            out.append(group)
        return out

    def add_samples(self, samples):
        self.buffer.extend(copy.deepcopy(samples))

    def save(self, rollout_id):
        pass

    def load(self, rollout_id=None):
        pass
