"""ESM-2 in Hugging Face format (a hub id or a local folder) as a model backend.

The weights are put into fair-esm's own ``esm.model.esm2.ESM2`` module, so the one
packed forward (PackedESM2) runs them: there is no second forward implementation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from esm.model.esm2 import ESM2

from virnucpro.infer.hf_esm2_config import FAIR_ESM_ALPHABET, HFESM2Config, read_hf_esm2_config
from virnucpro.infer.hf_esm2_weights import (
    OPTIONAL,
    checksum_of,
    iter_tensors,
    name_map,
    stored_shapes,
    targets,
    weight_files,
)
from virnucpro.infer.hf_sources import is_hf_folder, locate, looks_like_hub_id, snapshot_folder
from virnucpro.infer.models import LoadedModel, ModelInfo, ModelLoadError, esm2_parameter_count
from virnucpro.infer.packed import PackedESM2

_ROTARY_TOLERANCE = 1e-2
"""Stored inv_freq may carry fp16 or bf16 rounding (ESM-2 was trained in fp16); another
rotary base or head size differs by far more."""


class HFESM2Backend:
    """ESM-2 from a Hugging Face hub id (``org/name`` or ``org/name@revision``, through
    the HF cache) or a folder holding config.json and safetensors or pytorch_model.bin.

    ``describe`` reads config.json, checks every weight's name and shape against it
    (headers only) and hashes the weight files; ``load`` builds from the recorded
    folder or cached snapshot without network access or a second hash.
    """

    name = "hf-esm2"

    def matches(self, spec: str) -> bool:
        return is_hf_folder(spec) or looks_like_hub_id(spec)

    def describe(self, spec: str, random_weights: bool = False, seed: int = 0) -> ModelInfo:
        if random_weights:
            raise ModelLoadError(
                f"random weights come from a fair-esm model name such as esm2_t6_8M_UR50D, "
                f"not from the Hugging Face model {spec!r}"
            )
        files = locate(spec)
        config = read_hf_esm2_config(files.folder)
        weights = weight_files(files.folder)
        check_weights(weights, config, files.source)
        return ModelInfo(
            name=files.name,
            source=files.source,
            num_layers=config.num_layers,
            embed_dim=config.embed_dim,
            attention_heads=config.attention_heads,
            num_parameters=esm2_parameter_count(config.num_layers, config.embed_dim),
            checksum=checksum_of(weights),
            random_weights=False,
            seed=None,
            backend=self.name,
        )

    def load(
        self,
        info: ModelInfo,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> LoadedModel:
        folder = snapshot_folder(info.source)
        config = read_hf_esm2_config(folder)
        described = (info.num_layers, info.embed_dim, info.attention_heads)
        if (config.num_layers, config.embed_dim, config.attention_heads) != described:
            raise ModelLoadError(
                f"{folder}/config.json changed since the run described it "
                f"(layers, width, heads {described}); start the run again"
            )
        model = build_fair_esm2(folder, config, info.source, device, dtype)
        return LoadedModel(model, info)

    def packed_forward(
        self, loaded: LoadedModel, attention: str = "auto", compile: bool = False
    ) -> PackedESM2:
        return PackedESM2(loaded.model, attention=attention, compile=compile)


def _meta_esm2(config: HFESM2Config) -> ESM2:
    with torch.device("meta"):
        return ESM2(
            config.num_layers,
            config.embed_dim,
            config.attention_heads,
            alphabet=FAIR_ESM_ALPHABET,
            token_dropout=config.token_dropout,
        )


def check_weights(files: list[Path], config: HFESM2Config, where: str) -> None:
    """Every stored tensor maps to a fair-esm parameter of the configured shape, every
    parameter embeddings need is present, and stored rotary frequencies are ESM-2's."""
    expected = {name: tuple(t.shape) for name, t in _meta_esm2(config).state_dict().items()}
    names = name_map(config.num_layers)
    covered: set[str] = set()
    unexpected, rotary = [], set()
    for stored, shape in stored_shapes(files).items():
        fair_names = targets(stored, names, config.num_layers)
        if fair_names is None:
            continue
        if not fair_names:
            unexpected.append(stored)
        for fair in fair_names:
            if shape != expected[fair]:
                raise ModelLoadError(
                    f"{where}: weight {stored} has shape {list(shape)}, but config.json's "
                    f"architecture needs {list(expected[fair])}"
                )
            covered.add(fair)
            if fair.endswith("inv_freq"):
                rotary.add(stored)
    reverse = {fair: hf for hf, fair in names.items()}
    missing = [reverse.get(n, n) for n in expected if n not in covered and not OPTIONAL.match(n)]
    if missing or unexpected:
        raise ModelLoadError(
            f"{where} does not hold the ESM-2 its config.json describes: "
            f"{len(missing)} weights missing{_some(missing)}, "
            f"{len(unexpected)} unexpected{_some(unexpected)}"
        )
    for stored, tensor in iter_tensors(files, wanted=rotary):
        _check_rotary(stored, tensor, config.head_dim, where)


def _some(names: list[str]) -> str:
    if not names:
        return ""
    more = f", ... {len(names) - 3} more" if len(names) > 3 else ""
    return f" ({', '.join(names[:3])}{more})"


def esm2_inv_freq(head_dim: int) -> torch.Tensor:
    """fair-esm's RotaryEmbedding frequencies, as it computes them at init."""
    return 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))


def _check_rotary(stored: str, tensor: torch.Tensor, head_dim: int, where: str) -> None:
    wanted = esm2_inv_freq(head_dim)
    same_shape = tensor.shape == wanted.shape
    if not same_shape or not torch.allclose(tensor.float(), wanted, rtol=_ROTARY_TOLERANCE):
        raise ModelLoadError(
            f"{where}: {stored} is not ESM-2's rotary frequencies (base 10000, head size "
            f"{head_dim}); the packed forward cannot reproduce this model"
        )


def build_fair_esm2(
    folder: Path,
    config: HFESM2Config,
    where: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> ESM2:
    """fair-esm's ESM2 holding the folder's weights, on ``device`` in ``dtype``.

    Stored rotary frequencies are kept in fp32 as stored (fair-esm's own checkpoints
    carry fp16-rounded ones), else computed as fair-esm does. Heads embeddings do not
    use and the files lack are filled deterministically, not randomly: LM head dense,
    bias and contact regression with zeros, its LayerNorm weight with ones; fair-esm's
    LM decoder is the token embedding, as in ESM-2.
    """
    files = weight_files(folder)
    check_weights(files, config, where)
    model = _meta_esm2(config)
    expected = model.state_dict()
    names = name_map(config.num_layers)
    state: dict[str, torch.Tensor] = {}
    for stored, tensor in iter_tensors(files):
        for fair in targets(stored, names, config.num_layers) or ():
            state[fair] = _placed(fair, tensor, device, dtype)
    for fair, meta in expected.items():
        if fair not in state and fair != "lm_head.weight":
            state[fair] = _placed(fair, _default(fair, meta, config.head_dim), device, dtype)
    state["lm_head.weight"] = state["embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    model.lm_head.weight = model.embed_tokens.weight
    return model.eval()


def _placed(fair: str, tensor: torch.Tensor, device, dtype: torch.dtype) -> torch.Tensor:
    target = torch.float32 if fair.endswith("inv_freq") else dtype
    return tensor.to(device=device, dtype=target)


def _default(fair: str, meta: torch.Tensor, head_dim: int) -> torch.Tensor:
    if fair.endswith("inv_freq"):
        return esm2_inv_freq(head_dim)
    if fair == "lm_head.layer_norm.weight":
        return torch.ones(meta.shape)
    return torch.zeros(meta.shape)
