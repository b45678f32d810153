"""Upload a saved sparse model to the Hugging Face Hub (``llmsparse push``, ``--push-to-hub``).

The token comes from ``huggingface_hub``'s usual places (``HF_TOKEN``, ``huggingface-cli login``)
or the ``token`` argument; it is handed to ``HfApi`` and never printed or logged.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ..errors import PushError
from ..formats import shard_files
from .save import METADATA_FILE

log = logging.getLogger(__name__)


def check_model_dir(directory: str | Path) -> Path:
    """Refuse a directory that is not a complete saved model (config, safetensors weights, llmsparse metadata)."""
    path = Path(directory)
    if not path.is_dir():
        raise PushError(f"{str(path)!r} is not a directory")
    missing = [f for f in ("config.json", METADATA_FILE) if not (path / f).is_file()]
    if not shard_files(path):
        missing.append("model.safetensors (or a sharded index)")
    if missing:
        raise PushError(f"{str(path)!r} is not a model saved by llmsparse: missing {', '.join(missing)}")
    return path


def push(directory: str | Path, repo_id: str, private: bool = False, revision: str | None = None, token: str | None = None, api=None) -> str:
    """Create ``repo_id`` if needed (``exist_ok``) and upload ``directory``; returns the commit URL.

    ``api`` is an ``huggingface_hub.HfApi`` (injectable for tests); ``revision`` names a branch,
    created from main when it does not exist.
    """
    path = check_model_dir(directory)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    try:
        api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id=repo_id, repo_type="model", branch=revision, exist_ok=True)
        log.info("uploading %s to %s%s", path, repo_id, f"@{revision}" if revision else "")
        commit = api.upload_folder(
            repo_id=repo_id, repo_type="model", folder_path=str(path), revision=revision, commit_message="Upload sparse model (llmsparse)"
        )
    except Exception as err:  # network, endpoint, authentication or Hub errors, whatever HTTP library raised them
        first = re.sub(r"hf_[A-Za-z0-9]{6,}", "hf_***", str(err).strip().splitlines()[0]) if str(err).strip() else ""  # never a token
        raise PushError(f"upload of {str(path)!r} to {repo_id} failed ({type(err).__name__}{': ' + first if first else ''}); the saved model is unchanged") from err
    return str(getattr(commit, "commit_url", commit))
