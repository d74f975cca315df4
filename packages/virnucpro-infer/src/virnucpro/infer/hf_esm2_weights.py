"""Hugging Face ESM-2 weight files mapped onto fair-esm's ESM2 parameter names.

Accepted names are those transformers' ESM writes or reads: with or without the
``esm.`` prefix of EsmForMaskedLM, LayerNorm ``weight``/``bias`` or the legacy
``gamma``/``beta`` transformers 5 writes, and the rotary ``inv_freq`` per layer, once
per model, or under a ``layer.*`` name. ``pooler.*``, ``embeddings.position_ids`` and
``lm_head.decoder.*`` are ignored: fair-esm has no pooler and ties its LM decoder to
the token embedding.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from virnucpro.infer.models import ModelLoadError

_HASH_BLOCK = 1 << 22
_IGNORED = re.compile(
    r"^(pooler\.dense\.(weight|bias)|embeddings\.position_ids|lm_head\.decoder\..+)$"
)
_SHARED_INV_FREQ = re.compile(
    r"^(rotary_embeddings|encoder\.layer\.\*\.attention\.self\.rotary_embeddings)\.inv_freq$"
)
_PER_LAYER = (
    ("attention.self.query", "self_attn.q_proj"),
    ("attention.self.key", "self_attn.k_proj"),
    ("attention.self.value", "self_attn.v_proj"),
    ("attention.output.dense", "self_attn.out_proj"),
    ("attention.LayerNorm", "self_attn_layer_norm"),
    ("intermediate.dense", "fc1"),
    ("output.dense", "fc2"),
    ("LayerNorm", "final_layer_norm"),
)
_MODEL_LEVEL = (
    ("embeddings.word_embeddings.weight", "embed_tokens.weight"),
    ("encoder.emb_layer_norm_after.weight", "emb_layer_norm_after.weight"),
    ("encoder.emb_layer_norm_after.bias", "emb_layer_norm_after.bias"),
    ("contact_head.regression.weight", "contact_head.regression.weight"),
    ("contact_head.regression.bias", "contact_head.regression.bias"),
    ("lm_head.dense.weight", "lm_head.dense.weight"),
    ("lm_head.dense.bias", "lm_head.dense.bias"),
    ("lm_head.layer_norm.weight", "lm_head.layer_norm.weight"),
    ("lm_head.layer_norm.bias", "lm_head.layer_norm.bias"),
    ("lm_head.bias", "lm_head.bias"),
)
OPTIONAL = re.compile(r"^(lm_head\..+|contact_head\..+|layers\.\d+\.self_attn\.rot_emb\.inv_freq)$")
"""fair-esm names that embeddings do not need; load fills those a file lacks."""


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a model folder in a fixed order: safetensors first (one file
    or the shards its index names, sorted), else pytorch_model.bin (likewise)."""
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (folder / index).is_file():
            return _shards(folder, folder / index)
        if (folder / single).is_file():
            return [folder / single]
    raise ModelLoadError(
        f"{folder} holds no weights (model.safetensors, sharded safetensors with "
        "model.safetensors.index.json, or pytorch_model.bin)"
    )


def _shards(folder: Path, index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ModelLoadError(f"cannot read the shard index {index} ({error!r})") from None
    shards = [folder / name for name in names]
    missing = [name for name, shard in zip(names, shards, strict=True) if not shard.is_file()]
    if missing or not shards:
        raise ModelLoadError(f"{index} names shards that are not in {folder}: {missing}")
    return shards


def checksum_of(files: list[Path]) -> str:
    """sha256 of the files' bytes end to end: for one file, that file's sha256 (what the
    hub shows for it)."""
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as handle:
            while block := handle.read(_HASH_BLOCK):
                digest.update(block)
    return digest.hexdigest()


def canonical_name(name: str) -> str:
    """A stored name without the EsmForMaskedLM prefix, with LayerNorm weight/bias."""
    name = name.removeprefix("esm.")
    if name.endswith("LayerNorm.gamma"):
        return name.removesuffix("gamma") + "weight"
    if name.endswith("LayerNorm.beta"):
        return name.removesuffix("beta") + "bias"
    return name


def name_map(num_layers: int) -> dict[str, str]:
    """Canonical Hugging Face name -> fair-esm ESM2 name, for every mapped tensor."""
    names = dict(_MODEL_LEVEL)
    for i in range(num_layers):
        for hf_part, fair_part in _PER_LAYER:
            for kind in ("weight", "bias"):
                names[f"encoder.layer.{i}.{hf_part}.{kind}"] = f"layers.{i}.{fair_part}.{kind}"
        rotary = f"encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq"
        names[rotary] = f"layers.{i}.self_attn.rot_emb.inv_freq"
    return names


def targets(stored: str, names: dict[str, str], num_layers: int) -> tuple[str, ...] | None:
    """The fair-esm names a stored tensor fills; () if unknown, None if ignored."""
    name = canonical_name(stored)
    if _IGNORED.match(name):
        return None
    if _SHARED_INV_FREQ.match(name):
        return tuple(f"layers.{i}.self_attn.rot_emb.inv_freq" for i in range(num_layers))
    return (names[name],) if name in names else ()


def stored_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every stored tensor, without reading tensor data (safetensors)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        if path.suffix == ".safetensors":
            with _open_safetensors(path) as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open is no mapping)
                    shapes[name] = tuple(handle.get_slice(name).get_shape())
        else:
            shapes.update((name, tuple(t.shape)) for name, t in _torch_bin(path).items())
    return shapes


def iter_tensors(
    files: list[Path], wanted: set[str] | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """(stored name, CPU tensor) one at a time (all, or the names in ``wanted``)."""
    for path in files:
        if path.suffix == ".safetensors":
            with _open_safetensors(path) as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open is no mapping)
                    if wanted is None or name in wanted:
                        yield name, handle.get_tensor(name)
        else:
            for name, tensor in _torch_bin(path).items():
                if wanted is None or name in wanted:
                    yield name, tensor


def _open_safetensors(path: Path):
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError) as error:
        reason = " ".join(str(error).split())[:200]
        raise ModelLoadError(f"cannot read {path}: not a safetensors file ({reason})") from None


def _torch_bin(path: Path) -> dict[str, torch.Tensor]:
    """pytorch_model.bin through torch.load(weights_only=True): tensors only, never
    arbitrary pickled objects; memory-mapped where the format allows."""
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "zipfile" not in str(error).lower():
                raise
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelLoadError(
            f"{path} holds pickled objects other than tensors, which virnucpro refuses to "
            "unpickle; use the model's safetensors files"
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError) as error:
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise ModelLoadError(f"cannot read {path}: not a torch state dict ({reason})") from None
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ModelLoadError(f"{path} is not a state dict of tensors")
    return data
