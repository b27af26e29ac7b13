"""Shim of ``miles.utils.mask_utils``: loss masks of multi-turn conversations (SFT-style data).

``MultiTurnLossMaskGenerator.get_loss_mask(messages)`` returns the conversation's token ids and a
mask that is 1 on the assistant turns' tokens (not their role header) and 0 elsewhere; a message
with ``step_loss_mask != 1`` is not trained on. Miles builds it per template family (``qwen``,
``qwen3``, ``distill_qwen``); here one method serves any chat template that renders a conversation
as the concatenation of its turns: each turn's tokens are what rendering one more message adds,
and an assistant turn's header is what ``add_generation_prompt`` adds. A template that re-renders
earlier turns (Qwen3 dropping old ``<think>`` blocks) is an error that says so.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MultiTurnLossMaskGenerator", "get_response_lengths"]


def get_response_lengths(loss_masks: list[list[int]]) -> list[int]:
    """Per mask, the length from its first 1 to its end (0 when it has none)."""
    return [len(mask) - mask.index(1) if 1 in mask else 0 for mask in loss_masks]


class MultiTurnLossMaskGenerator:
    """Token ids and loss masks of chat conversations for ``tokenizer``'s chat template."""

    def __init__(self, tokenizer: Any, tokenizer_type: str = "qwen") -> None:
        if tokenizer_type not in ("qwen", "qwen3", "distill_qwen"):
            raise ValueError(f"Unsupported tokenizer type: {tokenizer_type} (qwen, qwen3 or distill_qwen)")
        self.tokenizer = tokenizer
        self.tokenizer_type = tokenizer_type

    def get_response_lengths(self, loss_masks: list[list[int]]) -> list[int]:
        return get_response_lengths(loss_masks)

    def _render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, gen: bool) -> list[int]:
        ids = self.tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=gen, tools=tools, return_dict=False
        )
        return list(ids)

    def _distill(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> tuple[list[int], list[int]]:
        # Prompt of the first message, then the last message's text as the trained response.
        prompt = self.tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True, tools=tools)
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response_ids = self.tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"]
        trained = messages[-1].get("step_loss_mask", 1) == 1
        return prompt_ids + response_ids, [0] * len(prompt_ids) + [int(trained)] * len(response_ids)

    def get_loss_mask(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> tuple[list[int], list[int]]:
        """``(token_ids, loss_mask)`` of the whole conversation."""
        if self.tokenizer_type == "distill_qwen" or "<｜Assistant｜>" in self.tokenizer.get_added_vocab():
            return self._distill(messages, tools)
        return self._per_turn(messages, tools)

    def _per_turn(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> tuple[list[int], list[int]]:
        ids: list[int] = []
        mask: list[int] = []
        for i, message in enumerate(messages):
            full = self._render(messages[: i + 1], tools, gen=False)
            if full[: len(ids)] != ids:
                raise ValueError(
                    f"MultiTurnLossMaskGenerator: the chat template re-renders earlier turns when message {i} "
                    f"({message.get('role')}) is added, so per-turn masks cannot be cut from it"
                )
            turn = full[len(ids) :]
            trained = message.get("role") == "assistant" and message.get("step_loss_mask", 1) == 1
            if trained:
                header = len(self._render(messages[:i], tools, gen=True)) - len(ids) if i > 0 else 0
                turn_mask = [0] * header + [1] * (len(turn) - header)
            else:
                turn_mask = [0] * len(turn)
            ids += turn
            mask += turn_mask
        return ids, mask

    def gen_multi_turn_loss_mask_qwen(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> tuple[list[int], list[int]]:
        return self._per_turn(messages, tools)

    gen_multi_turn_loss_mask_qwen3 = gen_multi_turn_loss_mask_qwen

    def gen_multi_turn_loss_mask_distill_qwen(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> tuple[list[int], list[int]]:
        return self._distill(messages, tools)

    def get_loss_mask_with_multimodal_alignment(
        self, messages: list[dict[str, Any]], input_ids: list[int], tools: list[dict[str, Any]] | None = None
    ) -> tuple[list[int], list[int]]:
        """The text-only mask, left-padded with zeros to ``input_ids`` (expanded image tokens)."""
        text_messages = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, list):
                parts = [p.get("text", "") if isinstance(p, dict) and p.get("type") == "text" else p for p in content]
                content = " ".join(p for p in parts if isinstance(p, str))
            text_messages.append({**message, "content": content})
        _, text_mask = self.get_loss_mask(text_messages, tools=tools)
        extra = len(input_ids) - len(text_mask)
        if extra < 0:
            raise ValueError(
                f"input_ids ({len(input_ids)}) is shorter than the text loss mask ({len(text_mask)}): "
                "the processor and the tokenizer tokenise differently"
            )
        return input_ids, [0] * extra + text_mask

    def get_text_from_loss_mask(self, token_ids: list[int], loss_masks: list[int]) -> list[str]:
        """The decoded text of each run of trained tokens."""
        texts: list[str] = []
        run: list[int] = []
        for token, keep in zip(token_ids, loss_masks, strict=False):
            if keep == 1:
                run.append(token)
            elif run:
                texts.append(self.tokenizer.decode(run))
                run = []
        if run:
            texts.append(self.tokenizer.decode(run))
        return texts
