"""``hf_checkpoint`` / ``ref_load``: a local model folder or a Hugging Face hub id, as transformers takes.

A hub id (``Qwen/Qwen2.5-0.5B``) is passed on to ``from_pretrained`` unchanged, so transformers
finds it in the hub cache (``HF_HUB_CACHE`` / ``HF_HOME``) or downloads it, and ``HF_HUB_OFFLINE=1``
keeps it to the cache. Before that, the id's ``config.json`` is looked up the same way, so that a
missing model fails at once with what to do, rather than as transformers' error after other work.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CheckpointNotFoundError", "resolve_pretrained"]


class CheckpointNotFoundError(FileNotFoundError):
    """A model setting names neither a local model folder nor a reachable hub model."""


def _looks_like_a_path(name: str) -> bool:
    # A hub id is "name" or "owner/name"; anything else with path syntax is meant as a folder.
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def resolve_pretrained(name: str, *, setting: str = "hf_checkpoint") -> str:
    """What to give ``from_pretrained`` for ``name``: the local folder, or the hub id once its
    config is found (in the cache, or on the hub when online). Raises CheckpointNotFoundError,
    naming ``setting`` and what to do, when neither works."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise CheckpointNotFoundError(
            f"{setting} {name!r} is a file; give a model folder or a hub id (owner/name)"
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    not_a_folder = f"{setting} {name!r} is not a local folder ({path.absolute()} does not exist)"
    if _looks_like_a_path(name):
        raise CheckpointNotFoundError(
            f"{not_a_folder}; give an existing model folder or a hub id (owner/name)"
        )
    try:
        hf_hub_download(name, "config.json")
    except HFValidationError as exc:  # checked before any lookup
        raise CheckpointNotFoundError(f"{not_a_folder}, and not a valid hub id: {exc}") from exc
    except LocalEntryNotFoundError as exc:
        from huggingface_hub import constants

        why = (
            "HF_HUB_OFFLINE is set, so only the local hub cache was searched"
            if _offline()
            else "the hub could not be reached"
        )
        raise CheckpointNotFoundError(
            f"{not_a_folder}, and the hub model {name!r} is not in the hub cache ({constants.HF_HUB_CACHE}): "
            f"{why}. Download it where the hub is reachable (`hf download {name}`, with HF_HUB_CACHE "
            "or HF_HOME pointing at this cache), or give a local model folder."
        ) from exc
    except GatedRepoError as exc:
        raise CheckpointNotFoundError(
            f"{setting} {name!r}: the hub model is gated; accept its terms on huggingface.co and log in "
            "(`hf auth login` or HF_TOKEN)"
        ) from exc
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise CheckpointNotFoundError(
            f"{not_a_folder}, and the hub has no model {name!r} (or it is private: log in with "
            "`hf auth login` or set HF_TOKEN)"
        ) from exc
    except EntryNotFoundError as exc:
        raise CheckpointNotFoundError(
            f"{setting} {name!r}: the hub repository has no config.json, so it is not a transformers model"
        ) from exc
    return name
