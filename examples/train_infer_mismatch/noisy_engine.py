"""An engine wrapper that reports perturbed log-probs, to simulate a train/inference mismatch."""

from __future__ import annotations

import random
from collections.abc import Sequence

import attrs

from miles_sdk.engines.base import EngineOutput, InferenceEngine, SamplingParams

__all__ = ["NoisyLogProbEngine"]


class NoisyLogProbEngine:
    """Delegates to ``inner`` and adds ``N(0, sigma^2)`` noise to each reported log-prob.

    The tokens are exactly what ``inner`` sampled; only the log-probs the trainer compares against
    change, as when inference kernels differ from training kernels. Log-probs stay <= 0. The noise
    is seeded, so a run is reproducible for a given request order.
    """

    def __init__(self, inner: InferenceEngine, *, sigma: float = 0.5, seed: int = 0) -> None:
        if sigma < 0:
            raise ValueError(f"NoisyLogProbEngine: sigma must be >= 0, got {sigma}")
        self.inner = inner
        self.sigma = sigma
        self._rng = random.Random(seed)

    async def generate(self, input_ids: Sequence[int], sampling_params: SamplingParams) -> EngineOutput:
        out = await self.inner.generate(input_ids, sampling_params)
        noisy = [min(lp + self._rng.gauss(0.0, self.sigma), 0.0) for lp in out.log_probs]
        return attrs.evolve(out, log_probs=noisy)

    async def abort_all(self) -> None:
        await self.inner.abort_all()

    def update_weights(self, version: int | None = None) -> None:
        self.inner.update_weights(version)

    @property
    def weight_version(self) -> int:
        return self.inner.weight_version


_engine_check: type[InferenceEngine] = NoisyLogProbEngine
