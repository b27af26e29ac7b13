"""Runnable miles_sdk examples, one package each, written the way a Miles user writes hook files.

Every example has hook module(s) of plain functions with the Miles signatures (typed with the
Protocols of :mod:`miles_sdk.hooks`) and a ``run.py`` whose ``main(argv=None)`` trains the tiny
CPU policy (``--num-rollout N --output-dir DIR``). The package is importable from the repository
root, so the dotted paths work as Miles flags, e.g.
``--custom-generate-function-path examples.search_r1.hooks.generate``.

- ``search_r1``: multi-turn retrieval with a local BM25 corpus; retrieved text is masked out.
- ``multi_agent``: a solver and a critic take turns; the generate function returns both samples.
- ``dr_grpo``: the constant-divisor policy-gradient loss reducer of Dr.GRPO.
- ``train_infer_mismatch``: masked importance sampling (MIS) as a TIS hook, with its metrics.
- ``custom_rollout``: a whole rollout function (best-of-n rejection sampling).
- ``custom_generate_and_rm``: a custom generate and a custom reward in one launch, from the CLI
  and from Python.

See docs/examples.md.
"""
