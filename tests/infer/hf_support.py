"""Tiny ESM-2 models in Hugging Face format, written by transformers itself, a Hugging
Face hub cache laid out as huggingface_hub writes it, and transformers' EsmModel as
the reference forward.

A fair-esm model is converted as transformers' own convert_esm.py does (same module
correspondence), so one set of random weights exists as a fair-esm `.pt` and as an HF
folder.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from pathlib import Path

import torch
from esm.model.esm2 import ESM2
from transformers import EsmConfig, EsmForMaskedLM, EsmModel
from transformers.models.esm.configuration_esm import get_default_vocab_list


def hf_config(model: ESM2) -> EsmConfig:
    """The config convert_esm.py writes for an ESM-2."""
    return EsmConfig(
        vocab_size=model.embed_tokens.num_embeddings,
        mask_token_id=model.mask_idx,
        pad_token_id=model.padding_idx,
        hidden_size=model.embed_dim,
        num_hidden_layers=model.num_layers,
        num_attention_heads=model.attention_heads,
        intermediate_size=4 * model.embed_dim,
        max_position_embeddings=1026,
        layer_norm_eps=1e-5,
        attention_probs_dropout_prob=0.0,
        hidden_dropout_prob=0.0,
        emb_layer_norm_before=False,
        token_dropout=model.token_dropout,
        position_embedding_type="rotary",
    )


@torch.no_grad()
def to_transformers(model: ESM2) -> EsmForMaskedLM:
    """transformers' EsmForMaskedLM holding `model`'s weights (convert_esm.py's mapping)."""
    hf = EsmForMaskedLM(hf_config(model)).eval()
    esm = hf.esm
    esm.embeddings.word_embeddings.weight.copy_(model.embed_tokens.weight)
    esm.encoder.emb_layer_norm_after.load_state_dict(model.emb_layer_norm_after.state_dict())
    for ours, theirs in zip(esm.encoder.layer, model.layers, strict=True):
        attn = ours.attention
        attn.self.query.load_state_dict(theirs.self_attn.q_proj.state_dict())
        attn.self.key.load_state_dict(theirs.self_attn.k_proj.state_dict())
        attn.self.value.load_state_dict(theirs.self_attn.v_proj.state_dict())
        attn.output.dense.load_state_dict(theirs.self_attn.out_proj.state_dict())
        attn.LayerNorm.load_state_dict(theirs.self_attn_layer_norm.state_dict())
        ours.intermediate.dense.load_state_dict(theirs.fc1.state_dict())
        ours.output.dense.load_state_dict(theirs.fc2.state_dict())
        ours.LayerNorm.load_state_dict(theirs.final_layer_norm.state_dict())
    esm.contact_head.regression.load_state_dict(model.contact_head.regression.state_dict())
    hf.lm_head.dense.load_state_dict(model.lm_head.dense.state_dict())
    hf.lm_head.layer_norm.load_state_dict(model.lm_head.layer_norm.state_dict())
    hf.lm_head.bias.copy_(model.lm_head.bias)
    return hf


def save_hf(model: ESM2, folder: Path, max_shard_size: str | None = None) -> Path:
    """`model` saved by transformers' save_pretrained (safetensors), with the vocab.txt
    of transformers' ESM-2 vocabulary."""
    options = {"max_shard_size": max_shard_size} if max_shard_size else {}
    to_transformers(model).save_pretrained(folder, **options)
    (folder / "vocab.txt").write_text("\n".join(get_default_vocab_list()) + "\n")
    return folder


def edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def put_in_hub_cache(folder: Path, cache: Path, hub_id: str, revision: str) -> Path:
    """Files of `folder` as huggingface_hub caches them: content in blobs/ named by
    sha256, snapshots/<revision>/ of relative symlinks, refs/main naming the revision."""
    repo = cache / ("models--" + hub_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def tree(root: Path) -> list[str]:
    """Every path under root (relative), or ['<absent>']."""
    if not root.exists():
        return ["<absent>"]
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


@torch.no_grad()
def transformers_means(folder: Path, token_rows: list[torch.Tensor]) -> torch.Tensor:
    """EsmModel's last hidden state, each sequence alone, mean over its residues."""
    reference = EsmModel.from_pretrained(folder, add_pooling_layer=False).eval()
    means = [reference(tokens[None]).last_hidden_state[0, 1:-1].mean(0) for tokens in token_rows]
    return torch.stack(means)


@torch.no_grad()
def packed_means(forward, input_ids, cu_seqlens, max_seqlen) -> torch.Tensor:
    """The packed forward's last layer, mean over residues of each sequence."""
    hidden = forward(input_ids, cu_seqlens, max_seqlen, [-1])
    last = next(iter(hidden.values()))
    bounds = cu_seqlens.tolist()
    return torch.stack([last[a + 1 : b - 1].mean(0) for a, b in itertools.pairwise(bounds)])
