"""hf_checkpoint / ref_load take a local model folder or a Hugging Face hub id, as transformers does.

No hub is reachable here, so the hub cases use a fake hub cache: HF_HUB_CACHE points at a temp
folder holding the tiny model in the hub-cache layout (models--owner--name/snapshots/<commit>/ plus
refs/main), with HF_HUB_OFFLINE=1. huggingface_hub reads both variables when it is imported, so
those cases run in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from miles_sdk import Config
from miles_sdk._hub import CheckpointNotFoundError, resolve_pretrained
from miles_sdk._policy import build_policy
from miles_sdk.testing.tiny import save_tiny_policy

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _fake_hub_cache(cache: Path, repo_id: str) -> None:
    """The tiny model as `hf download repo_id` would leave it in the hub cache."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    save_tiny_policy(repo / "snapshots" / COMMIT, "unit", seed=0)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)


def test_a_local_folder_loads(tmp_path: Path) -> None:
    folder = save_tiny_policy(tmp_path / "model", "unit", seed=0)
    policy = build_policy(
        Config(hf_checkpoint=str(folder), device="cpu"), model=None, tokenizer=None, model_provider=None
    )
    assert policy.tokenizer.eos_token is not None
    assert sum(p.numel() for p in policy.model.parameters()) > 0


@pytest.mark.parametrize("name", ["/no/such/model", "./no-such-model", "a/b/c"])
def test_a_missing_folder_says_it_is_neither_a_folder_nor_a_hub_id(name: str) -> None:
    with pytest.raises(CheckpointNotFoundError, match=r"hf_checkpoint .* is not a local folder .*hub id"):
        resolve_pretrained(name)


def test_a_file_is_not_a_model(tmp_path: Path) -> None:
    file = tmp_path / "model.bin"
    file.write_bytes(b"")
    with pytest.raises(CheckpointNotFoundError, match="is a file"):
        resolve_pretrained(str(file), setting="ref_load")


_CHILD = """
import json, sys
from miles_sdk import Config
from miles_sdk._hub import CheckpointNotFoundError
from miles_sdk._policy import build_policy

result = {}
config = Config(hf_checkpoint=sys.argv[1], ref_load=sys.argv[1], device="cpu")
policy = build_policy(config, model=None, tokenizer=None, model_provider=None)
result["params"] = sum(p.numel() for p in policy.model.parameters())
result["ref_params"] = sum(p.numel() for p in policy.load_reference(config).parameters())
result["vocab"] = len(policy.tokenizer)
try:
    build_policy(Config(hf_checkpoint=sys.argv[2], device="cpu"), model=None, tokenizer=None, model_provider=None)
    result["missing"] = "loaded"
except CheckpointNotFoundError as exc:
    result["missing"] = str(exc)
print("RESULT " + json.dumps(result))
"""


def test_a_hub_id_loads_from_the_hub_cache_offline_and_an_uncached_one_says_why(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    _fake_hub_cache(cache, "tiny-org/tiny-model")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env |= {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, "tiny-org/tiny-model", "tiny-org/not-downloaded"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout + done.stderr
    result = json.loads(lines[0].removeprefix("RESULT "))
    assert result["params"] > 0 and result["ref_params"] == result["params"]
    assert result["vocab"] > 0
    missing = result["missing"]
    assert "hf_checkpoint 'tiny-org/not-downloaded'" in missing, missing
    assert "not in the hub cache" in missing and str(cache) in missing, missing
    assert "HF_HUB_OFFLINE" in missing, missing
