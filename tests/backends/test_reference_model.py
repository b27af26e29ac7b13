"""The reference model is built in one place (_policy.build_reference), for the Trainer and for a
TorchBackend built without one alike."""

from __future__ import annotations

from pathlib import Path

import torch

from miles_sdk.backends.torch_backend import TorchBackend
from miles_sdk.testing import small_config, tiny_policy


def _weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_a_backend_built_without_a_reference_loads_ref_load(tmp_path: Path) -> None:
    reference, _ = tiny_policy("unit", seed=7)
    reference.save_pretrained(tmp_path / "ref")  # type: ignore[operator]
    policy, _ = tiny_policy("unit", seed=1)
    backend = TorchBackend(small_config(use_kl_loss=True, ref_load=str(tmp_path / "ref")), policy)
    assert backend.ref_model is not None and backend.ref_model is not policy
    # The old backend copied the policy whatever ref_load said.
    torch.testing.assert_close(_weights(backend.ref_model), _weights(reference))
    assert not any(p.requires_grad for p in backend.ref_model.parameters())
    assert not backend.ref_model.training


def test_without_ref_load_the_reference_is_a_frozen_copy_of_the_policy() -> None:
    policy, _ = tiny_policy("unit", seed=1)
    backend = TorchBackend(small_config(use_kl_loss=True), policy)
    assert backend.ref_model is not None and backend.ref_model is not policy
    torch.testing.assert_close(_weights(backend.ref_model), _weights(policy))
    assert not any(p.requires_grad for p in backend.ref_model.parameters())
