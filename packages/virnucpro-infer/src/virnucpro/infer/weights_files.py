"""Reading and fetching weights files without ever unpickling arbitrary objects."""

from __future__ import annotations

import argparse
import hashlib
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from virnucpro.infer.models import ModelLoadError

_HASH_BLOCK = 1 << 22


def load_weights_file(path: Path) -> dict[str, Any]:
    """torch.load with weights_only=True; argparse.Namespace is the one class allowed,
    because fair-esm's published checkpoints store their config as one."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        forbidden = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if forbidden is None:
            raise ModelLoadError(
                f"cannot read weights file {path}: it is not a torch checkpoint"
            ) from None
        raise ModelLoadError(
            f"{path} holds a pickled {forbidden.group(1)}, which virnucpro refuses to "
            f"unpickle (only tensors and argparse.Namespace); use fair-esm's published .pt"
        ) from None
    except (OSError, RuntimeError, EOFError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelLoadError(f"cannot read weights file {path}: {reason}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a fair-esm checkpoint (no dict at its top level)")
    return data


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def download_file(url: str, destination: Path) -> None:
    """Download to `destination` (torch.hub writes a temporary file, then renames)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(destination), progress=False)
