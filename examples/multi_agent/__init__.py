"""Multi-agent generation: a solver and a critic take turns, and both are trained.

``hooks.generate`` (``--custom-generate-function-path``) makes two engine calls per prompt:

1. the **solver** answers the prompt (``"3+4="`` -> ``"7"``);
2. the **critic** sees the question and the solver's answer in a different prompt
   (``"3+4=7\\nCorrect? "``) and answers ``yes`` or ``no``.

It returns ``[solver, critic]``: a ``list[Sample]``, so both become training samples. The critic
sample gets its own ``group_index`` (:func:`hooks.critic_group_index`) so GRPO compares critics
with critics and solvers with solvers of the same prompt.

``hooks.reward_fn`` is a *batched* reward (``--custom-rm-path`` with ``--group-rm``): the rollout
calls it once per prompt group with every solver and critic sample of that group. The solver
scores 1 for the right sum; the critic scores 1 when its verdict is right about the solver.

Run it::

    python -m examples.multi_agent.run --num-rollout 4 --output-dir outputs/multi_agent

or with Miles flags: ``--custom-generate-function-path examples.multi_agent.hooks.generate
--custom-rm-path examples.multi_agent.hooks.reward_fn --group-rm``.

Note: Miles scores a generate function's list with the batched custom rm even without
``--group-rm``; in miles_sdk the batched form is used only with ``group_rm``, which this example
therefore turns on.
"""
