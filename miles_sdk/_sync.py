"""The Trainer's weight-sync stage (step 8) and the checks that tell a run its engine is not
sampling from the weights being trained.

- :meth:`WeightSync.sync`: an engine that reads the trainer's module (the embedded one) is told
  the new version; an engine whose replicas hold their own weights (``rollout_engine="http"``, a
  router over URLs) gets them through a ``save_pretrained`` directory and SGLang's
  ``/update_weights_from_disk``, or, with ``weight_sync_method="distributed"`` and engine replicas
  or SGLang servers that can join one, through a torch.distributed group the trainer broadcasts
  from in buckets (:class:`~miles_sdk.engines.weight_group.WeightGroupSender`; servers that cannot
  join are named and synced through the disk), or, with
  ``weight_sync_method="tensor"`` (or ``colocate``) and replicas on the trainer's device, as
  handles to the trainer's memory (:class:`~miles_sdk.engines.weight_tensor.TensorSender`).
- With ``check_weight_sync`` (on in tests: the pytest plugin sets ``MILES_SDK_CHECK_WEIGHT_SYNC=1``)
  every sync is followed by a check: each replica reports the new version and the first rows of a
  few tensors equal to the trainer's (within a bf16 cast); a mismatch raises.
- :func:`warn_on_logprob_gap`: on a step that is on-policy by construction the engine's log-probs
  and the trainer's must agree up to numerical noise; a larger gap is logged loudly with its
  likely causes.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from miles_sdk._external import HOST_IP_ENV, master_address
from miles_sdk._loop import LoopThread
from miles_sdk.config import Config
from miles_sdk.engines.base import InferenceEngine, RemoteWeightsEngine, ReplicaWeights, WeightReporter
from miles_sdk.engines.weight_group import (
    GroupJoinError,
    ServerGroupTarget,
    WeightGroupSender,
    WeightGroupTarget,
)
from miles_sdk.engines.weight_sync import (
    FINGERPRINT_ROWS,
    WeightSyncError,
    compare_fingerprint,
    fingerprint_names,
    flatten_values,
    save_for_sync,
    weights_by_name,
)
from miles_sdk.engines.weight_tensor import TensorSender, TensorTarget, colocated
from miles_sdk.types import Metrics

__all__ = ["CHECK_ENV", "WeightSync", "logprob_gap_threshold", "warn_on_logprob_gap"]

logger = logging.getLogger("miles_sdk.trainer")

CHECK_ENV = "MILES_SDK_CHECK_WEIGHT_SYNC"
"""Set to 1 to check every weight sync whatever the Config says (the pytest plugin does)."""

_GAP_KEY = "train/train_rollout_logprob_abs_diff"


class WeightSync:
    """Sends the trained weights to the engine and, when asked, checks that they arrived."""

    def __init__(
        self,
        args: Config,
        model: torch.nn.Module,
        engine: InferenceEngine,
        loop: LoopThread,
        *,
        before_sync: Callable[[], None] | None = None,
    ) -> None:
        """``model``: what the engine samples from; ``before_sync`` brings it up to date first
        (with LoRA: merges the adapter into it)."""
        self.args = args
        self.before_sync = before_sync
        self.model = model
        self.engine = engine
        self.loop = loop
        self.check = args.check_weight_sync or os.environ.get(CHECK_ENV) == "1"
        self.in_sync = True
        """The engine samples from the trainer's current weights (false between a train step and
        the next sync)."""
        self._tmp: str | None = None
        self._names: list[str] | None = None
        self._unchecked_logged = False
        self._disk_fallback_logged = False
        self._sender: WeightGroupSender | None = None
        self._group_refused: str | None = None
        """Why servers (rollout_engine="http") could not join a weight update group: the disk then."""
        self._tensors: TensorSender | None = None
        self._tensor_skip_logged = False

    @property
    def remote(self) -> bool:
        """True when the engine's weights live elsewhere and must be sent."""
        return isinstance(self.engine, RemoteWeightsEngine) and self.engine.remote_weights

    def sync(self, version: int | None = None) -> None:
        """Make the engine sample from the trainer's weights, under ``version`` (default: the next)."""
        version = self.engine.weight_version + 1 if version is None else version
        if self.before_sync is not None:
            self.before_sync()
        tensors = self._tensor_target() if self.remote else None
        target = self._group_target() if self.remote and tensors is None else None
        if target is not None and not self.loop.run(self._send_through_group(target, version)):
            target = None  # servers that cannot join: through the disk below
        if tensors is not None:
            self.loop.run(self._send_as_tensors(tensors, version))
            self._note_version(version)
        elif target is not None:
            self._note_version(version)
        elif self.remote:
            assert isinstance(self.engine, RemoteWeightsEngine)
            path = save_for_sync(self.model, self._directory() / "weights")
            self.loop.run(self.engine.load_weights_from_disk(str(path), version))
        else:
            self.engine.update_weights(version)
        self.in_sync = True
        if self.check:
            self.verify(version)

    def _note_version(self, version: int) -> None:
        """The replicas or servers took ``version`` with the weights (group and tensor syncs send
        it with them); the engine's client records it, or the next sync would publish it again."""
        note = getattr(self.engine, "note_weight_version", None)
        if callable(note):
            note(version)

    def verify(self, version: int) -> None:
        """Raise :class:`WeightSyncError` unless every replica reports ``version`` and the trainer's
        weights."""
        reports = self._reports()
        if reports is None:
            if not self._unchecked_logged:
                logger.info("check_weight_sync: %s cannot report its weights; only syncing", type(self.engine).__name__)
                self._unchecked_logged = True
            return
        names = self._fingerprint_names()
        expected = {n: flatten_values(weights_by_name(self.model, n, FINGERPRINT_ROWS)) for n in names}
        for report in reports:
            where = f"weight sync check ({report.replica})"
            if report.weight_version != version:
                raise WeightSyncError(
                    f"{where}: the engine reports weight version {report.weight_version}, the trainer just "
                    f"synced version {version}: the update did not reach it"
                )
            compare_fingerprint(expected, report.values, where=where)

    def _tensor_target(self) -> TensorTarget | None:
        """Replicas that take handles to the trainer's memory: ``weight_sync_method="tensor"``, or
        ``colocate`` (with the default "disk") when every replica is on the trainer's device."""
        method = self.args.weight_sync_method
        if method != "tensor" and not (self.args.colocate and method == "disk"):
            return None
        engine = self.engine
        if not isinstance(engine, TensorTarget):
            if method == "tensor" and not self._disk_fallback_logged:
                logger.warning(
                    "weight_sync_method='tensor': %s cannot map the trainer's memory (only rollout_num_gpus "
                    "engine replicas can); syncing through the disk",
                    type(engine).__name__,
                )
                self._disk_fallback_logged = True
            return None
        device = next(self.model.parameters()).device
        elsewhere = colocated(engine, device)
        if elsewhere and method == "tensor":
            raise WeightSyncError(
                f"weight_sync_method='tensor' (--weight-sync-method tensor): {', '.join(elsewhere)} not on the "
                f"trainer's device {device}; tensor handles (CUDA IPC, shared memory) reach only replicas on that "
                "device. Use --weight-sync-method distributed, or disk"
            )
        if elsewhere:
            if not self._tensor_skip_logged:
                logger.info(
                    "colocate: %s not on the trainer's device %s; syncing weights through %s",
                    ", ".join(elsewhere),
                    device,
                    method,
                )
                self._tensor_skip_logged = True
            return None
        if self._tensors is None:
            logger.info(
                "weight sync: tensor handles (%s) to the replicas on %s",
                "CUDA IPC" if device.type == "cuda" else "shared memory",
                device,
            )
            self._tensors = TensorSender(bucket_bytes=self.args.update_weight_buffer_size)
        return engine

    async def _send_as_tensors(self, target: TensorTarget, version: int) -> None:
        assert self._tensors is not None
        try:
            await self._tensors.send(target, self.model, version)
        except WeightSyncError as e:
            # Once more: a replica lost mid-sync is replaced (it starts from the disk copy) first.
            logger.warning("%s; sending again", e)
            await self._tensors.send(target, self.model, version)

    def _group_target(self) -> WeightGroupTarget | None:
        if self.args.weight_sync_method != "distributed" or self._group_refused is not None:
            return None
        if isinstance(self.engine, WeightGroupTarget):
            return self.engine
        if not self._disk_fallback_logged:
            logger.warning(
                "weight_sync_method='distributed': %s cannot join a weight update group (rollout_num_gpus "
                "engine replicas and an HttpEngine's servers can, a router's URL through its workers; the "
                "in-process Router that use_miles_router or middlewares put in front cannot); syncing through "
                "the disk",
                type(self.engine).__name__,
            )
            self._disk_fallback_logged = True
        return None

    async def _send_through_group(self, target: WeightGroupTarget, version: int) -> bool:
        """Broadcast the weights; False when servers we did not start (``rollout_engine="http"``)
        cannot join a group (at once when one refuses to join; after a second try when a sync
        that had joined failed): this and every later sync then goes through the disk."""
        if self._sender is None:
            on_gpu = any(p.is_cuda for p in self.model.parameters())
            chosen = master_address(self.args)
            self._sender = WeightGroupSender(
                backend="nccl" if on_gpu else "gloo",
                bucket_bytes=self.args.update_weight_buffer_size,
                server_address=chosen[0] if chosen is not None else None,
            )
        servers = isinstance(target, ServerGroupTarget)
        try:
            await self._sender.send(target, self.model, version)
        except GroupJoinError as e:
            if not servers:
                # Once more with a new group: a replica lost mid-sync is replaced and rejoins.
                logger.warning("%s; reopening the group and sending again", e)
                await self._sender.send(target, self.model, version)
                return True
            # A server that refused to join (or cannot reach this process, or cannot say how
            # many ranks it joins with) would do so again: the disk at once, no second try.
            return self._refused(e)
        except WeightSyncError as e:
            # Once more with a new group: a replica lost mid-sync is replaced and rejoins.
            logger.warning("%s; reopening the group and sending again", e)
            try:
                await self._sender.send(target, self.model, version)
            except GroupJoinError as again:
                if not servers:
                    raise
                return self._refused(again)
        return True

    def _refused(self, error: GroupJoinError) -> bool:
        assert self._sender is not None
        self._sender.close()
        self._group_refused = str(error)
        hint = (
            ""
            if master_address(self.args) is not None
            else " (the address the servers were told to reach this process at was picked from the route to "
            "them: if they cannot reach it, set weight_sync_master_address, --weight-sync-master-address, or "
            f"{HOST_IP_ENV})"
        )
        logger.warning("weight_sync_method='distributed': %s%s; syncing through the disk from now on", error, hint)
        return False

    def close(self) -> None:
        """Remove the temporary weight directory, if one was made."""
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _directory(self) -> Path:
        if self.args.weight_sync_dir is not None:
            return Path(self.args.weight_sync_dir)
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="miles_sdk_weights_")
        return Path(self._tmp)

    def _fingerprint_names(self) -> list[str]:
        if self._names is None:
            self._names = fingerprint_names(self.model)
        return self._names

    def _reports(self) -> list[ReplicaWeights] | None:
        engine, names = self.engine, self._fingerprint_names()
        if isinstance(engine, WeightReporter):
            reports = self.loop.run(engine.report_weights(names, FINGERPRINT_ROWS))
            return reports or None
        reader = getattr(engine, "get_weights_by_name", None)
        if reader is None:
            return None
        values = {n: flatten_values(reader(n, FINGERPRINT_ROWS)) for n in names}
        return [ReplicaWeights(type(engine).__name__, engine.weight_version, values)]


def logprob_gap_threshold(args: Config, model: torch.nn.Module) -> float:
    """``logprob_gap_warn_threshold``, or its default for the dtypes this run computes in."""
    if args.logprob_gap_warn_threshold is not None:
        return args.logprob_gap_warn_threshold
    param = next(model.parameters(), None)
    low_precision = param is not None and (
        param.dtype in (torch.bfloat16, torch.float16) or param.device.type == "cuda"  # the engine decodes in bf16
    )
    return 0.05 if low_precision else 0.005


def warn_on_logprob_gap(
    metrics: Metrics, *, rollout_id: int, threshold: float, on_policy: bool, remote: bool = False
) -> bool:
    """Log a warning when an on-policy step's engine/trainer log-prob gap is above ``threshold``;
    True when it warned."""
    gap = metrics.get(_GAP_KEY)
    if not on_policy or gap is None or threshold <= 0 or not gap > threshold:
        return False
    causes: Sequence[str] = (
        "the engine does not hold the trained weights (a sync that never reached it"
        + (": the engine's weights live in another process" if remote else "")
        + "; check_weight_sync=True checks every sync)",
        "dropout left on in the model (the engine samples without it)",
        (
            "the engine computes in another dtype or with other kernels than the trainer (raise the "
            "threshold if that is its noise)"
        ),
        "a tokenizer or chat template that differs between the engine and the trainer",
    )
    logger.warning(
        "train_rollout_logprob_abs_diff = %.4g on rollout %d, above %.4g, although this step is on-policy by "
        "construction (the engine sampled from the weights being trained): the engine's log-probs disagree "
        "with the trainer's. Likely causes: %s. Tune with logprob_gap_warn_threshold (0: off).",
        gap,
        rollout_id,
        threshold,
        "; ".join(f"({i + 1}) {c}" for i, c in enumerate(causes)),
    )
    return True
