"""The Miles docs' worked example: a custom generate function and a custom reward in one launch.

Miles's hook documentation ends with a launch script that sets both hooks at once::

    --custom-generate-function-path my_pkg.search_rollout.generate
    --custom-rm-path                my_pkg.rewards.f1_with_grounding
    --metadata-key metadata

This example is that launch, with the two hooks in ``hooks.py``:

- ``generate``: *answer forcing*. The model answers the reading-comprehension prompt; if it
  stops without writing ``Answer:``, the cue ``\\nAnswer:`` is appended (loss mask 0: the policy
  is not trained to write the cue, it is handed to it) and generation continues once.
- ``reward_fn`` (f1 with grounding): the SQuAD F1 of the answer against the label, halved when
  the answer uses words that are not in the passage (``metadata["context"]``, read through
  ``--metadata-key``).

It runs two ways, which train the same thing:

1. From the command line, exactly as a Miles launch script would::

       miles-sdk train --hf-checkpoint DIR --prompt-data data.jsonl --label-key label \\
           --metadata-key metadata --rollout-max-response-len 16 --num-rollout 4 \\
           --custom-generate-function-path examples.custom_generate_and_rm.hooks.generate \\
           --custom-rm-path examples.custom_generate_and_rm.hooks.reward_fn

   ``python -m examples.custom_generate_and_rm.run --cli`` saves the tiny policy and the JSONL
   under ``--output-dir`` and runs that command in-process.
2. From Python: ``Trainer(config, generate_fn=generate, reward_model=reward_fn)``, what
   ``python -m examples.custom_generate_and_rm.run`` does.
"""
