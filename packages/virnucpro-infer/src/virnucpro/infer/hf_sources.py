"""Where Hugging Face model files live: a local folder, or a hub id resolved through
huggingface_hub's cache (downloaded there when online).

The cache location and offline switch are read from the environment at each call
(HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME, HF_HUB_OFFLINE), not once at import as
huggingface_hub's constants are, so a process that sets them before loading a model
is obeyed.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import NamedTuple

from virnucpro.infer.models import ModelLoadError

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.txt"
SAFETENSORS_PATTERNS = ("model.safetensors", "model-*.safetensors", "model.safetensors.index.json")
TORCH_BIN_PATTERNS = ("pytorch_model.bin", "pytorch_model-*.bin", "pytorch_model.bin.index.json")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}(@[\w./-]+)?$")
_TRUE = {"1", "ON", "YES", "TRUE"}


class ModelFiles(NamedTuple):
    """A folder holding config.json and weights, and how a run records where it came from."""

    folder: Path
    source: str
    """The folder's absolute path, or ``hub_id@commit`` for a hub model."""
    name: str


class CachedHFModel(NamedTuple):
    hub_id: str
    revision: str
    path: Path


def hf_hub_cache_dir() -> Path:
    """huggingface_hub's cache folder as the environment says now."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = os.environ.get("HF_HOME")
    if not home:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        home = os.path.join(xdg, "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def hf_offline() -> bool:
    values = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return any((value or "").upper() in _TRUE for value in values)


def is_hf_folder(spec: str) -> bool:
    path = Path(spec)
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def looks_like_hub_id(spec: str) -> bool:
    """``org/name`` (optionally ``@revision``) that is not an existing path or a .pt file."""
    if spec.endswith(".pt") or Path(spec).exists():
        return False
    repo_id = spec.split("@", 1)[0]
    return bool(_HUB_ID.match(spec)) and ".." not in repo_id and "--" not in repo_id


def split_hub_spec(spec: str) -> tuple[str, str | None]:
    repo_id, _, revision = spec.partition("@")
    return repo_id, revision or None


def locate(spec: str) -> ModelFiles:
    """The folder ``spec`` names, or the cached (or freshly downloaded) hub snapshot."""
    if is_hf_folder(spec):
        folder = Path(spec).resolve()
        return ModelFiles(folder, str(folder), folder.name)
    if Path(spec).is_dir():
        raise ModelLoadError(
            f"{spec} is a folder without {CONFIG_FILE}; a Hugging Face model folder holds "
            f"{CONFIG_FILE} and model.safetensors"
        )
    repo_id, revision = split_hub_spec(spec)
    folder = _snapshot(repo_id, revision)
    return ModelFiles(folder, f"{repo_id}@{folder.name}", repo_id)


def snapshot_folder(source: str) -> Path:
    """The folder a recorded ``source`` names, without any network access: a worker
    loads exactly the snapshot that was described."""
    if Path(source).is_dir():
        return Path(source)
    repo_id, revision = split_hub_spec(source)
    folder = hf_hub_cache_dir() / _repo_folder(repo_id) / "snapshots" / (revision or "")
    if revision is None or not (folder / CONFIG_FILE).is_file():
        raise ModelLoadError(
            f"{source} is no longer in the Hugging Face cache {hf_hub_cache_dir()} "
            f"(looked for {folder}); the run was described from it: restore it or start again"
        )
    return folder


def _repo_folder(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")


def _snapshot(repo_id: str, revision: str | None) -> Path:
    """snapshot_download with only the files a model needs: config.json, vocab.txt and
    safetensors, or pytorch_model.bin when the repository has no safetensors."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    cache = hf_hub_cache_dir()
    offline = hf_offline()

    def download(patterns: list[str]) -> Path:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=str(cache),
            local_files_only=offline,
            endpoint=os.environ.get("HF_ENDPOINT") or None,
            allow_patterns=patterns,
        )
        return Path(str(folder))

    try:
        folder = download([CONFIG_FILE, VOCAB_FILE, *SAFETENSORS_PATTERNS])
        if not has_weights(folder) and not offline:
            folder = download([CONFIG_FILE, VOCAB_FILE, *TORCH_BIN_PATTERNS])
    except LocalEntryNotFoundError as error:
        raise ModelLoadError(
            _not_cached_message(repo_id, revision, cache, offline, error)
        ) from None
    except (HfHubHTTPError, HFValidationError, OSError) as error:
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise ModelLoadError(
            f"{repo_id} cannot be fetched from the Hugging Face hub into {cache} ({reason}); "
            f"check the id, revision and access, or pass a local folder holding {CONFIG_FILE} "
            "and model.safetensors"
        ) from None
    if not (folder / CONFIG_FILE).is_file() or not has_weights(folder):
        raise ModelLoadError(
            f"the cached snapshot {folder} of {repo_id} lacks {CONFIG_FILE} or its weights; "
            f"download it again with `hf download {repo_id}`"
        )
    return folder


def _not_cached_message(
    repo_id: str, revision: str | None, cache: Path, offline: bool, error: Exception
) -> str:
    why = (
        "HF_HUB_OFFLINE=1 forbids downloading"
        if offline
        else f"the hub could not be reached ({type(error.__cause__ or error).__name__})"
    )
    at = f" at revision {revision}" if revision else ""
    return (
        f"{repo_id}{at} is not in the Hugging Face cache {cache} and {why}; pre-download it "
        f"with `hf download {repo_id}` (or `huggingface-cli download {repo_id}`) where the "
        f"hub is reachable, with HF_HUB_CACHE or HF_HOME pointing at this cache, "
        f"or pass a local folder holding {CONFIG_FILE} and model.safetensors"
    )


def has_weights(folder: Path) -> bool:
    names = (
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    )
    return any((folder / name).is_file() for name in names)


def find_cached_hf_esm2(cache: Path | None = None) -> list[CachedHFModel]:
    """Every snapshot in the Hugging Face cache whose config.json says ESM (model_type
    "esm", rotary positions, not ESMFold), sorted by hub id and revision."""
    cache = hf_hub_cache_dir() if cache is None else cache
    found = []
    for repo in sorted(cache.glob("models--*--*")):
        hub_id = repo.name.removeprefix("models--").replace("--", "/", 1)
        for snapshot in sorted((repo / "snapshots").glob("*")):
            if _is_esm2_config(snapshot / CONFIG_FILE) and has_weights(snapshot):
                found.append(CachedHFModel(hub_id, snapshot.name, snapshot))
    return found


def _is_esm2_config(path: Path) -> bool:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(config, dict)
        and config.get("model_type") == "esm"
        and config.get("position_embedding_type") == "rotary"
        and not config.get("is_folding_model", False)
    )
