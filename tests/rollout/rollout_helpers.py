"""Shared helpers for the rollout tests: a char tokenizer, an in-memory data source, a config."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from miles_sdk.config import Config
from miles_sdk.types import Sample


class CharTokenizer:
    """One token per character (id = code point): every length in a test is countable by eye."""

    def encode(self, text: str, /, *, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, token_ids: list[int], /, *, skip_special_tokens: bool = False) -> str:
        return "".join(chr(t) for t in token_ids)

    def apply_chat_template(
        self,
        conversation: list[dict[str, str]],
        /,
        *,
        tokenize: bool = False,
        add_generation_prompt: bool = True,
    ) -> object:
        text = "".join(f"<{m['role']}>{m['content']}" for m in conversation)
        return text + ("<assistant>" if add_generation_prompt else "")


class ListSource:
    """A DataSource over a fixed prompt list with a buffer, recording every call."""

    def __init__(self, prompts: Sequence[str], n: int, labels: Sequence[str] | None = None) -> None:
        self.prompts = list(prompts)
        self.labels = list(labels) if labels is not None else [""] * len(prompts)
        self.n = n
        self.offset = 0
        self.next_index = 0
        self.buffer: list[list[Sample]] = []
        self.get_calls: list[int] = []
        self.added: list[list[Sample]] = []

    def get_samples(self, num_samples: int) -> list[list[Sample]]:
        self.get_calls.append(num_samples)
        out = self.buffer[:num_samples]
        del self.buffer[:num_samples]
        while len(out) < num_samples:
            i = self.offset % len(self.prompts)
            group = []
            for _ in range(self.n):
                group.append(
                    Sample(
                        group_index=self.offset,
                        index=self.next_index,
                        prompt=self.prompts[i],
                        label=self.labels[i],
                    )
                )
                self.next_index += 1
            self.offset += 1
            out.append(group)
        return out

    def add_samples(self, samples: list[list[Sample]]) -> None:
        for group in samples:
            assert len(group) == self.n
        self.buffer.extend(samples)
        self.added.extend(samples)

    def save(self, rollout_id: int) -> None:
        pass

    def load(self, rollout_id: int | None = None) -> None:
        pass


def make_config(**overrides: Any) -> Config:
    base: dict[str, Any] = {
        "rollout_batch_size": 2,
        "n_samples_per_prompt": 2,
        "rollout_max_response_len": 16,
        "rollout_temperature": 1.0,
    }
    base.update(overrides)
    return Config(**base)
