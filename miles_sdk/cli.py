"""``miles-sdk train|demo`` with Miles-compatible flags.

``miles-sdk train --hf-checkpoint DIR --prompt-data data.jsonl --custom-rm-path my.rewards.rm ...``
runs the same Trainer a script would build; unknown (e.g. Megatron) flags are an error unless
``--allow-unknown-flags`` keeps them for hooks to read as ``args.<name>``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]

_USAGE = """usage: miles-sdk {train,demo} [flags]

  train  [Miles flags]   run the Trainer (e.g. --hf-checkpoint DIR --prompt-data FILE --num-rollout N)
  demo   [--output-dir]  the embedded CPU demo: GRPO on single-digit addition
"""


def _train(argv: list[str]) -> int:
    from miles_sdk.config import Config
    from miles_sdk.trainer import Trainer

    allow_unknown = "--allow-unknown-flags" in argv
    argv = [a for a in argv if a != "--allow-unknown-flags"]
    config = Config.from_args(argv, allow_unknown=allow_unknown)
    trainer = Trainer(config)
    try:
        history = trainer.fit()
    finally:
        trainer.close()
    if history:
        last = history[-1]
        print(
            f"done: {len(history)} rollouts, last reward {last.get('rollout/reward_mean', float('nan')):.4f}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "train":
        return _train(rest)
    if command == "demo":
        from miles_sdk.demo.run import main as demo_main

        return demo_main(rest)
    print(f"miles-sdk: unknown command {command!r}\n{_USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
