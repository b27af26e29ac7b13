"""Search-R1: multi-turn retrieval-augmented generation, trained with an exact-match reward.

The policy interleaves reasoning with searches::

    <search>capital of France</search>          <- generated (trained on)
    <information>Doc 1: Paris is ...</information>  <- retrieved (loss mask 0)
    <answer>Paris</answer>                       <- generated (trained on)

Files:

- ``retriever.py``: the corpus (a dozen short documents), the questions, and a small BM25.
- ``hooks.py``: the Miles hooks, ``generate`` (``--custom-generate-function-path``) and
  ``reward_fn`` (``--custom-rm-path``): exact match of the ``<answer>`` with the label.
- ``run.py``: trains the tiny CPU policy with both hooks.

How ``generate`` works: each model turn stops at ``</search>`` or ``</answer>`` (the marker is kept
in the response). After a search, the top BM25 documents are appended as ``<information>``
tokens with ``append_tokens(..., loss_mask_value=0)``, so the policy is never trained to produce
retrieved text, and the next turn continues from the longer context. ``max_new_tokens`` is the
budget of the whole response, retrieved tokens included: when it runs out the sample ends
TRUNCATED without another engine call.

Run it::

    python -m examples.search_r1.run --num-rollout 4 --output-dir outputs/search_r1

or, as Miles flags::

    miles-sdk train --hf-checkpoint DIR --prompt-data FILE --label-key label \\
        --custom-generate-function-path examples.search_r1.hooks.generate \\
        --custom-rm-path examples.search_r1.hooks.reward_fn

A random tiny policy will not emit the tags, so ``tests/examples/test_example_search_r1.py``
drives ``generate`` with a ``ScriptedEngine`` (loss-mask layout, retrieved text in the second
request, budget) and runs two Trainer steps with the real tiny policy.
"""
