"""``miles-sdk train|demo`` with Miles-compatible flags.

``miles-sdk train --hf-checkpoint DIR --prompt-data data.jsonl --custom-rm-path my.rewards.rm ...``
runs the same Trainer a script would build; unknown (e.g. Megatron) flags are an error unless
``--allow-unknown-flags`` keeps them for hooks to read as ``args.<name>``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence

__all__ = ["COMMANDS", "main"]

_USAGE = """usage: miles-sdk {train,demo} [flags]

  train  [Miles flags]   run the Trainer (e.g. --hf-checkpoint DIR --prompt-data FILE --num-rollout N)
  demo   [--output-dir]  the embedded CPU demo: GRPO on single-digit addition
"""


def _train(argv: list[str]) -> int:
    from miles_sdk.config import Config
    from miles_sdk.trainer import Trainer

    allow_unknown = "--allow-unknown-flags" in argv
    argv = [a for a in argv if a != "--allow-unknown-flags"]
    # Like `python -m`, hook paths (--custom-rm-path my_pkg.rewards.rm) resolve from the current
    # directory too.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
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


def _user_errors() -> tuple[type[BaseException], ...]:
    from miles_sdk.config import ConfigError
    from miles_sdk.data.dataset import DatasetError
    from miles_sdk.loading import HookLoadError, HookSignatureError
    from miles_sdk.rewards import RewardLabelError

    return (ConfigError, DatasetError, HookLoadError, HookSignatureError, RewardLabelError, FileNotFoundError)


def _train_command(rest: list[str]) -> int:
    if "-h" in rest or "--help" in rest:
        from miles_sdk._cli_args import build_parser
        from miles_sdk.config import Config

        build_parser(Config).print_help()
        return 0
    try:
        return _train(rest)
    except _user_errors() as exc:
        # A bad flag, path, hook or dataset is the user's to fix: say what, not where in our code.
        print(f"miles-sdk train: error: {exc}", file=sys.stderr)
        return 2


def _demo_command(rest: list[str]) -> int:
    from miles_sdk.demo.run import main as demo_main

    try:
        return demo_main(rest)
    except SystemExit as exc:  # argparse's --help and usage errors: an exit code, as for train
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2


COMMANDS: dict[str, Callable[[list[str]], int]] = {"train": _train_command, "demo": _demo_command}
"""Every subcommand (tests render each one's --help)."""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    run = COMMANDS.get(command)
    if run is None:
        print(f"miles-sdk: unknown command {command!r}\n{_USAGE}", file=sys.stderr)
        return 2
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
