"""LoRA through peft with Miles's flags (``--lora-rank``, ``--lora-alpha``, ``--lora-dropout``,
``--target-modules``, ``--exclude-modules``, ``--lora-adapter-path``).

:func:`apply_lora` wraps the policy in a ``peft`` model whose base weights are frozen, so the
optimizer holds the adapter alone. The engine cannot sample from the peft model (its fast path
reads plain ``nn.Linear`` weights, and replicas load a ``save_pretrained`` folder), so it gets a
second, plain model: :attr:`LoraPolicy.engine_model`. That model shares every untouched tensor
with the base (embeddings, norms, untargeted layers: no copy) and owns only the targeted weights,
which :meth:`LoraPolicy.merge_into_engine` sets to ``W + (alpha / r) * B @ A`` from the frozen
base at every weight sync. Merging from the frozen base each time, rather than merging into the
trained model and unmerging afterwards (peft's ``merge_adapter``), never adds rounding error to the
base: a bf16 weight would drift by one rounding per step.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from miles_sdk.config import Config, ConfigError

__all__ = ["ADAPTER_NAME", "ALL_LINEAR", "LoraPolicy", "apply_lora", "target_module_names"]

log = logging.getLogger(__name__)

ADAPTER_NAME = "default"
"""peft's name for the adapter being trained (the only one)."""

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""What ``--target-modules all-linear`` means, as Miles expands it (attention and MLP projections,
not the LM head); MLA models add their low-rank projections (:func:`target_module_names`)."""

# Megatron's module names (Miles accepts either naming) and the HF modules each stands for.
_MEGATRON_TO_HF = {
    "linear_qkv": ("q_proj", "k_proj", "v_proj"),
    "linear_proj": ("o_proj",),
    "linear_fc1": ("gate_proj", "up_proj"),
    "linear_fc2": ("down_proj",),
    "linear_q": ("q_proj",),
    "linear_k": ("k_proj",),
    "linear_v": ("v_proj",),
    "linear_fc1_gate": ("gate_proj",),
    "linear_fc1_up": ("up_proj",),
}


def _split(names: str) -> list[str]:
    return [n.strip() for n in names.split(",") if n.strip()]


def target_module_names(args: Config, model_config: object = None) -> list[str]:
    """``--target-modules`` minus ``--exclude-modules``, in HF names, as Miles parses them."""
    if not args.target_modules:
        raise ConfigError("target_modules (--target-modules) is required with lora_rank (--lora-rank)")
    if args.target_modules == "all-linear":
        modules = list(ALL_LINEAR)
        if getattr(model_config, "kv_lora_rank", None):  # MLA (DeepSeek-style attention)
            modules += ["kv_a_proj_with_mqa", "kv_b_proj"]
            if getattr(model_config, "q_lora_rank", None):
                modules += ["q_a_proj", "q_b_proj"]
    else:
        modules = []
        for name in _split(args.target_modules):
            for hf in _MEGATRON_TO_HF.get(name, (name,)):
                if hf not in modules:
                    modules.append(hf)
    excluded = set(_split(args.exclude_modules or ""))
    kept = [m for m in modules if m not in excluded]
    if not kept:
        raise ConfigError(
            f"target_modules (--target-modules {args.target_modules!r}) minus exclude_modules "
            f"(--exclude-modules {args.exclude_modules!r}) leaves no module to adapt"
        )
    return kept


def _import_peft() -> Any:
    try:
        import peft
    except ImportError as exc:
        raise ImportError(
            "LoRA (--lora-rank) needs peft: pip install 'miles_sdk[lora]' (or pip install peft)"
        ) from exc
    return peft


class LoraPolicy:
    """A policy trained through a LoRA adapter: the peft model the backend trains, and the merged
    plain model the engine samples from. Satisfies :class:`miles_sdk.lora.TrainableAdapter`."""

    def __init__(self, model: nn.Module, engine_model: nn.Module) -> None:
        self.model = model
        """The peft model: frozen base plus the trainable adapter (what the backend trains)."""
        self.engine_model = engine_model
        """A plain model of the base's class: base weights with the adapter merged in (what the
        engine samples from, and what save_hf writes as a full model)."""
        from peft.tuners.lora import Linear as LoraLinear

        base = _base_model(model)
        self._pairs: list[tuple[Any, torch.Tensor]] = []
        for name, module in base.named_modules():
            if isinstance(module, LoraLinear):
                target = engine_model.get_submodule(name)
                weight = getattr(target, "weight", None)
                if (
                    not isinstance(weight, torch.Tensor)
                    or weight.shape != module.get_base_layer().weight.shape
                ):
                    raise RuntimeError(f"LoRA: the engine's copy of {name} does not match the adapted layer")
                self._pairs.append((module, weight))

    # ---- the engine's weights ------------------------------------------------------------------

    @torch.no_grad()
    def merge_into_engine(self) -> None:
        """Set the engine model's adapted weights to base + the adapter's current update."""
        for layer, weight in self._pairs:
            merged = layer.get_base_layer().weight + layer.get_delta_weight(ADAPTER_NAME)
            weight.copy_(merged)

    # ---- TrainableAdapter ------------------------------------------------------------------------

    def reference(self) -> contextlib.AbstractContextManager[object]:
        """The reference model is the base: the policy with its adapter off (as TRL does with peft),
        so no second copy of the weights is kept."""
        return _adapter_off(self.model)

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.trainable_parameters().items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        own = self.trainable_parameters()
        missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
        if missing or unexpected:
            what = (
                "a full model (saved without LoRA)"
                if not any("lora_" in k for k in state)
                else "another adapter (other --lora-rank / --target-modules?)"
            )
            raise ValueError(
                f"LoRA checkpoint: it holds {what}; this run's adapter has {len(own)} tensors "
                f"({len(missing)} missing, e.g. {missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})"
            )
        with torch.no_grad():
            for name, p in own.items():
                saved = state[name]
                if saved.shape != p.shape:
                    raise ValueError(
                        f"LoRA checkpoint: {name} has shape {tuple(saved.shape)}, this run's adapter "
                        f"{tuple(p.shape)} (another --lora-rank?)"
                    )
                p.copy_(saved)
        self.merge_into_engine()

    # ---- export --------------------------------------------------------------------------------

    def save_hf(self, directory: str | Path) -> None:
        """As Miles's save_hf with LoRA: the merged model in ``directory`` (loads with
        ``AutoModelForCausalLM.from_pretrained``) and the peft adapter in ``directory/adapter``
        (adapter_config.json + adapter_model.safetensors: loads with ``PeftModel.from_pretrained``
        on the base model)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.merge_into_engine()
        _method(self.engine_model, "save_pretrained")(str(path))
        _method(self.model, "save_pretrained")(str(path / "adapter"))


@contextlib.contextmanager
def _adapter_off(model: nn.Module) -> Iterator[object]:
    with _method(model, "disable_adapter")():
        yield None


def _method(obj: object, name: str) -> Any:
    """A method of a peft / transformers model, which ``nn.Module.__getattr__`` types as a tensor."""
    method = getattr(obj, name, None)
    if not callable(method):
        raise TypeError(f"LoRA: {type(obj).__name__} has no {name}()")
    return method


def _base_model(peft_model: nn.Module) -> nn.Module:
    get_base_model = getattr(peft_model, "get_base_model", None)
    if not callable(get_base_model):
        raise TypeError(f"LoRA: {type(peft_model).__name__} is not a peft model")
    base = get_base_model()
    assert isinstance(base, nn.Module)
    return base


def apply_lora(args: Config, model: nn.Module) -> LoraPolicy:
    """Wrap ``model`` (in place, as peft does) with a LoRA adapter per ``args``: a new one, or the
    one at ``lora_adapter_path``; freeze the base; build the engine's merged model."""
    peft = _import_peft()
    names = target_module_names(args, getattr(model, "config", None))
    if args.lora_adapter_path is not None:
        peft_model = _load_adapter(peft, args, model, names)
    else:
        lora_config = peft.LoraConfig(
            r=args.lora_rank,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            target_modules=names,
            bias="none",
            task_type="CAUSAL_LM",
        )
        try:
            peft_model = peft.get_peft_model(model, lora_config)
        except ValueError as exc:  # peft: no module matched
            raise ConfigError(
                f"target_modules (--target-modules {args.target_modules!r}): {exc}. Linear modules of "
                f"{type(model).__name__}: {sorted(_linear_leaf_names(model))}"
            ) from exc
    _check_adapted_layers(peft_model, model, names)
    if args.lora_dropout > 0:
        log.warning(
            "lora_dropout (--lora-dropout) = %g is written to adapter_config.json but trains as 0: RL keeps "
            "every dropout off so the trainer's log-probs equal the engine's (docs/lora.md)",
            args.lora_dropout,
        )
    engine_model = _merged_copy(peft_model)
    policy = LoraPolicy(peft_model, engine_model)
    trainable = sum(p.numel() for p in policy.trainable_parameters().values())
    total = sum(p.numel() for p in peft_model.parameters())
    log.info(
        "LoRA rank %d, alpha %d on %s: %d trainable parameters of %d (%.3f%%)",
        args.lora_rank, args.lora_alpha, ",".join(names), trainable, total, 100.0 * trainable / max(total, 1),
    )  # fmt: skip
    return policy


def _load_adapter(peft: Any, args: Config, model: nn.Module, names: list[str]) -> nn.Module:
    """``--lora-adapter-path``: a peft folder whose settings must equal the flags (Miles builds the
    adapter from the flags and loads the weights into it; a mismatch fails there on shapes)."""
    path = Path(str(args.lora_adapter_path))
    where = f"lora_adapter_path (--lora-adapter-path {str(path)!r})"
    if not (path / "adapter_config.json").is_file():
        raise ConfigError(f"{where}: no adapter_config.json there (expected a peft adapter folder)")
    saved = peft.LoraConfig.from_pretrained(str(path))
    mismatches = []
    if saved.r != args.lora_rank:
        mismatches.append(f"rank {saved.r} (--lora-rank {args.lora_rank})")
    if saved.lora_alpha != args.lora_alpha:
        mismatches.append(f"alpha {saved.lora_alpha} (--lora-alpha {args.lora_alpha})")
    saved_targets = saved.target_modules
    if not isinstance(saved_targets, str) and set(saved_targets or ()) != set(names):
        mismatches.append(f"target modules {sorted(saved_targets or ())} (--target-modules: {sorted(names)})")
    if mismatches:
        raise ConfigError(f"{where}: the adapter was trained with " + ", ".join(mismatches))
    loaded: nn.Module = peft.PeftModel.from_pretrained(model, str(path), is_trainable=True)
    return loaded


def _linear_leaf_names(model: nn.Module) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def _check_adapted_layers(peft_model: nn.Module, model: nn.Module, names: list[str]) -> None:
    """Only linear layers of the body: the LM head stays a plain Linear for the backend's chunked
    log-probs, and an adapted (tied) embedding would change the head too."""
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    head = getattr(_base_model(peft_model), "get_output_embeddings", lambda: None)()
    for name, module in _base_model(peft_model).named_modules():
        if isinstance(module, LoraLayer) and (not isinstance(module, LoraLinear) or module is head):
            raise ConfigError(
                f"target_modules (--target-modules): {name} ({type(module).__name__}) cannot take a LoRA "
                "adapter here; adapt the linear layers of the attention and MLP (e.g. all-linear)"
            )
    if not any(p.requires_grad for p in peft_model.parameters()):
        raise ConfigError(f"target_modules (--target-modules): no trainable adapter on {names}")


def _merged_copy(peft_model: nn.Module) -> nn.Module:
    """A plain model for the engine: the frozen tensors it would not change are shared with the
    trained model (deepcopy's memo hands back the same objects); the adapted weights are copied,
    and peft's merge_and_unload folds the adapter into those copies and removes the LoRA layers."""
    from peft.tuners.lora import LoraLayer

    adapted = {id(m.get_base_layer().weight) for m in peft_model.modules() if isinstance(m, LoraLayer)}
    shared = [*peft_model.parameters(), *peft_model.buffers()]
    memo: dict[int, Any] = {id(t): t for t in shared if id(t) not in adapted and not t.requires_grad}
    engine: nn.Module = _method(copy.deepcopy(peft_model, memo), "merge_and_unload")()
    engine.requires_grad_(False)
    engine.eval()
    return engine
