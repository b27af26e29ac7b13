"""A whole rollout function: best-of-n rejection sampling (``--rollout-function-path``).

The default rollout generates, scores and filters for you. Replacing it gives full control of a
step's data; this one keeps a prompt group only when its best sample reaches a reward threshold
(the prompt is within the policy's reach), and draws more prompts until ``rollout_batch_size``
groups are kept or ``max_rounds`` rounds have passed. A cold-start policy may never pass, so
after the last round the batch is topped up with the best rejected groups; the metrics say how
many (``rollout/best_of_n/topped_up``).

It reaches the engine the way every rollout does: :func:`miles_sdk.rollout.generate_with_engine`
sends each sample to the engine of the :class:`~miles_sdk.rollout.RolloutContext` that the
Trainer installs, and :func:`miles_sdk.rewards.score_samples` scores with the run's reward hook.
With ``evaluation=True`` it hands over to the default eval rollout.

Run it::

    python -m examples.custom_rollout.run --num-rollout 4 --output-dir outputs/custom_rollout

or with Miles flags: ``--rollout-function-path examples.custom_rollout.rollout.best_of_n_rollout``.
"""
