"""Dr.GRPO: divide the policy-gradient loss by a constant instead of each answer's length.

GRPO averages each sample's per-token loss over its own tokens, so a token of a short answer
weighs more than a token of a long one; that biases the policy towards short correct answers and
long wrong ones. Dr.GRPO ("Understanding R1-Zero-Like Training", Liu et al. 2025) removes the
bias: every sample's token sum is divided by the same constant, and group rewards are centred but
not divided by their std (``--disable-grpo-std-normalization``).

``reducer.get_pg_loss_reducer`` is the hook (``--custom-pg-loss-reducer-function-path``). It has
the signature of the default reducer and is used for the pg loss only; the other metrics
(``pg_clipfrac``, ``ppo_kl``, entropy) keep the default per-sample mean. The library ships the
same reducer as ``miles_sdk.algo.constant_divisor_reducer(divisor)``.

Scale convention: as in Miles, a reducer hook returns the *sum* over the micro-batch's samples and
the Trainer divides by the batch size, so this reducer computes ``sum_i(sum_t mask_it * x_it) /
DIVISOR``, exactly like Miles's ``examples/experimental/DrGRPO/custom_reducer.py``.

Run it (the hook is given by its Miles path, as in a launch script)::

    python -m examples.dr_grpo.run --num-rollout 4 --output-dir outputs/dr_grpo
"""
