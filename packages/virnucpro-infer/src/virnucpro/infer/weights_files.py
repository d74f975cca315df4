"""Reading and fetching weights files without ever unpickling arbitrary objects."""

from __future__ import annotations

import argparse
import hashlib
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from virnucpro.infer.models import ModelLoadError

_HASH_BLOCK = 1 << 22


def load_weights_file(path: Path, mmap: bool = False) -> dict[str, Any]:
    """torch.load with weights_only=True; argparse.Namespace is the one class allowed,
    because fair-esm's published checkpoints store their config as one. ``mmap`` reads
    tensors only when touched (zip-format files; older ones are read whole)."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notes are not ours to print
            data = _torch_load(path, mmap)
    except pickle.UnpicklingError as error:
        forbidden = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if forbidden is None:
            raise ModelLoadError(f"cannot read weights file {path}: {_what_it_is(path)}") from None
        raise ModelLoadError(
            f"{path} holds a pickled {forbidden.group(1)}, which virnucpro refuses to "
            f"unpickle (only tensors and argparse.Namespace); use fair-esm's published .pt"
        ) from None
    except (OSError, RuntimeError, EOFError, KeyError, ValueError, IndexError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelLoadError(
            f"cannot read weights file {path}: not a torch checkpoint ({reason[:200]}); "
            "pass a fair-esm ESM-2 .pt file"
        ) from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a fair-esm checkpoint (no dict at its top level)")
    return data


def _what_it_is(path: Path) -> str:
    """Why torch's weights-only reader refused a file that is not a torch zip archive."""
    with open(path, "rb") as handle:
        head = handle.read(2)
    if head[:1] == b"\x80":
        return (
            "it is a plain pickle, which could run code when loaded and which virnucpro "
            "refuses to unpickle; pass a fair-esm ESM-2 .pt file"
        )
    return "not a torch checkpoint; pass a fair-esm ESM-2 .pt file"


def _torch_load(path: Path, mmap: bool) -> Any:
    if mmap:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "zipfile" not in str(error).lower():
                raise
    return torch.load(path, map_location="cpu", weights_only=True)


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
