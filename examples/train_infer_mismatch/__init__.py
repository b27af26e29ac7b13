"""Train/inference mismatch: masked importance sampling (MIS) as a TIS hook, and its metrics.

The inference engine (SGLang) and the trainer (Megatron/FSDP) compute slightly different
log-probs for the same tokens, so the rollout is a little off-policy. With the per-token ratio
``w = pi_train_old / pi_rollout``, MIS reweights the policy-gradient loss by ``w`` (truncated at
``tis_upper_bound``) and masks out tokens whose ``w`` leaves ``[rs_lower, rs_upper]``
(rejection sampling); ``rs_veto_threshold`` drops a whole sequence holding a catastrophically
unlikely token.

Files:

- ``mis.py``: ``MIS_CONFIG`` (the settings of Miles's ``mis.yaml``, as Config fields) and the
  hook ``compute_mis_weights`` (``--custom-tis-function-path``). It wraps
  ``miles_sdk.algo.mis_function`` and adds one diagnostic, ``mis_ess``: the effective sample size
  of the final weights as a fraction of the tokens (1 = no correction at all).
- ``noisy_engine.py``: on the CPU the embedded engine shares the trainer's weights, so there is
  no mismatch to correct. ``NoisyLogProbEngine`` wraps it and perturbs the log-probs it reports
  with seeded Gaussian noise, a stand-in for kernel differences, so the metrics move.
- ``run.py``: trains the tiny policy with MIS on and prints the mismatch metrics
  (``train/mis_kl``, ``train/mis_rs_mask_fraction_*``, ``train/mis_ess``, ...).

Run it::

    python -m examples.train_infer_mismatch.run --num-rollout 4 --output-dir outputs/mismatch

As Miles flags: ``--use-tis --use-rs --tis-upper-bound 2.0 --tis-lower-bound 0.5
--rs-veto-threshold 1e-4 --tis-batch-normalize --custom-tis-function-path
examples.train_infer_mismatch.mis.compute_mis_weights``. With ``--get-mismatch-metrics`` alone
the metrics are logged and the loss is left unchanged.
"""
