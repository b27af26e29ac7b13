"""The policy: a transformers causal LM and its tokenizer, from ``hf_checkpoint`` or given objects."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import torch
from torch import nn

from miles_sdk._hub import resolve_pretrained
from miles_sdk.config import Config
from miles_sdk.hooks import ModelProviderFn

if TYPE_CHECKING:
    from miles_sdk.lora import LoraPolicy

__all__ = ["Policy", "build_policy", "build_reference", "disable_dropout", "load_policy_tokenizer", "resolve_device"]

log = logging.getLogger(__name__)

# Attribute names that hold a dropout probability: attention_dropout, hidden_dropout,
# classifier_dropout, attention_probs_dropout_prob (BERT-style), resid_pdrop / embd_pdrop /
# attn_pdrop (GPT-2-style), layerdrop (OPT, a probability of skipping a layer).
_DROPOUT_MARKERS = ("dropout", "pdrop", "layerdrop")


def _is_dropout_rate(name: str, value: object) -> bool:
    return (
        not name.startswith("_")
        and any(marker in name.lower() for marker in _DROPOUT_MARKERS)
        and isinstance(value, float)
        and value > 0.0
    )


def _zero_config_dropout(config: object, prefix: str, changed: list[str], seen: set[int]) -> None:
    if id(config) in seen:
        return
    seen.add(id(config))
    for name, value in list(vars(config).items()):
        if _is_dropout_rate(name, value):
            setattr(config, name, 0.0)
            changed.append(f"{prefix}{name}={value}")
        elif type(value).__name__.endswith("Config") and hasattr(value, "__dict__"):
            _zero_config_dropout(value, f"{prefix}{name}.", changed, seen)  # text_config, ...


def disable_dropout(model: nn.Module, *, role: str = "policy") -> list[str]:
    """Set every dropout probability of ``model`` to 0, in its config(s) and in its modules.

    RL needs the loss's forward (train mode) to be the same function as the one that scored the
    old log-probs (eval mode): with dropout on, the ratio is not 1 even at the first, on-policy
    step, and the clip fires on noise. TRL and verl switch dropout off the same way. HF modules
    copy rates from the config at build time (``self.attention_dropout``), so both are set.
    Returns what was changed (``name=old value``), which is logged."""
    changed: list[str] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "__dict__"):
            _zero_config_dropout(config, "config.", changed, seen)
        where = module_name or type(module).__name__
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            changed.append(f"{where}.p={module.p}")
            module.p = 0.0
            continue
        for name, value in list(vars(module).items()):
            if _is_dropout_rate(name, value):
                setattr(module, name, 0.0)
                changed.append(f"{where}.{name}={value}")
    if changed:
        shown = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
        log.warning("%s: dropout set to 0 for RL (old and new log-probs must match): %s", role, shown)
    return changed


def resolve_device(args: Config) -> torch.device:
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(args.device)


def _dtype(args: Config, device: torch.device) -> torch.dtype:
    # auto: bf16 parameters on CUDA (fast compute, the engine decodes from them live) with fp32
    # master weights in the optimizer (see backends/optim.py); float32 on CPU.
    if args.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]


def build_reference(args: Config, policy: nn.Module) -> nn.Module:
    """The frozen reference model (the one place it is built): ``ref_load`` when set, else a copy
    of ``policy`` as it is now (the initial policy, before any step); on the policy's device, with
    dropout off, in eval mode and without gradients."""
    device = next(policy.parameters()).device
    if args.ref_load is not None:
        from transformers import AutoModelForCausalLM

        ref: nn.Module = AutoModelForCausalLM.from_pretrained(
            resolve_pretrained(args.ref_load, setting="ref_load"), dtype=_dtype(args, device)
        )
        ref.to(device)
    else:
        ref = copy.deepcopy(policy)
    disable_dropout(ref, role="reference")
    ref.eval()
    ref.requires_grad_(False)
    return ref


@attrs.define
class Policy:
    model: nn.Module
    """The module the backend trains (with LoRA: the peft model, base frozen)."""
    tokenizer: Any
    device: torch.device
    lora: LoraPolicy | None = None
    """Set with lora_rank > 0: the adapter, and the merged model the engine samples from."""

    @property
    def engine_model(self) -> nn.Module:
        """The module the engine samples from and weight syncs send: the policy itself, or with
        LoRA a plain model with the adapter merged in at each sync (miles_sdk.lora)."""
        return self.lora.engine_model if self.lora is not None else self.model

    def merge_adapter(self) -> None:
        """With LoRA, fold the adapter's current weights into the engine's model (before a sync)."""
        if self.lora is not None:
            self.lora.merge_into_engine()

    def load_reference(self, args: Config) -> nn.Module:
        """The frozen reference model: ``ref_load`` when set, else a copy of the initial policy."""
        return build_reference(args, self.model)

    def save_hf(self, directory: str) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        if self.lora is not None:
            self.lora.save_hf(directory)  # the merged model, and the peft adapter in adapter/
            if hasattr(self.tokenizer, "save_pretrained"):
                self.tokenizer.save_pretrained(directory)
            return
        save = getattr(self.model, "save_pretrained", None)
        if save is None:
            raise TypeError(f"save_hf: {type(self.model).__name__} has no save_pretrained")
        save(directory)
        if hasattr(self.tokenizer, "save_pretrained"):
            self.tokenizer.save_pretrained(directory)


def load_policy_tokenizer(args: Config) -> Any:
    """The tokenizer of ``hf_checkpoint`` (a local folder or a hub id), without the weights."""
    from transformers import AutoTokenizer

    if args.hf_checkpoint is None:
        raise ValueError("no tokenizer: set hf_checkpoint in the Config, or pass tokenizer=")
    return AutoTokenizer.from_pretrained(resolve_pretrained(args.hf_checkpoint, setting="hf_checkpoint"))


def build_policy(
    args: Config, *, model: nn.Module | None, tokenizer: Any, model_provider: ModelProviderFn | None
) -> Policy:
    device = resolve_device(args)
    if model is None and model_provider is not None:
        # As Miles does: vp_stage only for a provider that takes it.
        from miles_sdk.loading import accepts_positional

        model = (
            model_provider(True, True, None)
            if accepts_positional(model_provider, 3)
            else model_provider(True, True)
        )
    if model is None:
        if args.hf_checkpoint is None:
            raise ValueError("no policy: set hf_checkpoint in the Config, or pass model= and tokenizer=")
        from transformers import AutoModelForCausalLM

        # A local folder or a hub id (found in the hub cache, or downloaded), as transformers takes.
        checkpoint = resolve_pretrained(args.hf_checkpoint, setting="hf_checkpoint")
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=_dtype(args, device))
    if tokenizer is None:
        source = args.hf_checkpoint
        if source is None:
            raise ValueError("a model was given without tokenizer=; pass the tokenizer too")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(source, setting="hf_checkpoint"))
    # On the CPU with dtype=auto a given model keeps its dtype (a bf16 one then trains with masters).
    keep_dtype = args.dtype == "auto" and device.type == "cpu"
    model.to(device=device, dtype=None if keep_dtype else _dtype(args, device))
    disable_dropout(model)
    lora = None
    if args.lora_rank > 0:
        from miles_sdk.lora import apply_lora

        lora = apply_lora(args, model)  # only the adapter trains; the engine gets a merged model
        model = lora.model
        disable_dropout(model, role="policy (LoRA adapter, --lora-dropout)")
    model.train()
    return Policy(model=model, tokenizer=tokenizer, device=device, lora=lora)
