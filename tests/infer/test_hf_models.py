"""ESM-2 in Hugging Face format: a local folder or a hub id from an offline HF cache,
mapped onto fair-esm's ESM2 and run by the one packed forward; transformers' EsmModel
is the reference."""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import socket
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from virnucpro.infer import ESM2Backend, ModelLoadError
from virnucpro.infer.hf_esm2 import HFESM2Backend
from virnucpro.infer.hf_sources import find_cached_hf_esm2

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
hf = importlib.import_module("hf_support")

HUB_ID = "tiny-org/esm2_tiny"
REVISION = "0123456789abcdef0123456789abcdef01234567"
SEQUENCES = ["MKTVRQERLKSIVRILERSKEPVSGAQ", "AC", "MKT<mask>RQERL<mask>SIV", "W" * 40]


@pytest.fixture(scope="module")
def fair_model(make_esm2):
    return make_esm2(2, 32, 4, seed=11)


@pytest.fixture(scope="module")
def hf_folder(fair_model, tmp_path_factory):
    return hf.save_hf(fair_model, tmp_path_factory.mktemp("hf") / "esm2_tiny")


@pytest.fixture(scope="module")
def packed_input(packing):
    input_ids, cu_seqlens, max_seqlen, parts = packing.pack(SEQUENCES)
    return input_ids, cu_seqlens, max_seqlen, parts


@pytest.fixture(scope="module")
def reference(hf_folder, packed_input):
    return hf.transformers_means(hf_folder, packed_input[3])


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty HF cache that huggingface_hub must use, offline."""
    cache = tmp_path / "hf_cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def embed(spec: str, packed_input, backend=None) -> torch.Tensor:
    backend = backend or HFESM2Backend()
    loaded = backend.load(backend.describe(spec))
    forward = backend.packed_forward(loaded, attention="sdpa")
    return hf.packed_means(forward, *packed_input[:3])


def test_local_folder_equals_transformers(hf_folder, packed_input, reference):
    backend = HFESM2Backend()
    info = backend.describe(str(hf_folder))
    assert (info.backend, info.source, info.name) == ("hf-esm2", str(hf_folder), "esm2_tiny")
    assert (info.num_layers, info.embed_dim, info.attention_heads) == (2, 32, 4)
    weights = (hf_folder / "model.safetensors").read_bytes()
    assert info.checksum == hashlib.sha256(weights).hexdigest()
    assert not info.random_weights and info.seed is None
    means = embed(str(hf_folder), packed_input)
    torch.testing.assert_close(means, reference, rtol=0, atol=1e-5)


RESIDUES = st.lists(
    st.sampled_from([*"ACDEFGHIKLMNPQRSTVWYXBUZO", "<mask>"]), min_size=1, max_size=30
)


@settings(max_examples=15, deadline=None)
@given(batch=st.lists(RESIDUES, min_size=1, max_size=4))
def test_any_batch_equals_transformers_sequence_by_sequence(hf_folder, packing, batch):
    """Packing never mixes sequences: each one's mean equals transformers on it alone."""
    backend = HFESM2Backend()
    forward = backend.packed_forward(backend.load(backend.describe(str(hf_folder))), "sdpa")
    input_ids, cu_seqlens, max_seqlen, parts = packing.pack(["".join(s) for s in batch])
    means = hf.packed_means(forward, input_ids, cu_seqlens, max_seqlen)
    reference = hf.transformers_means(hf_folder, parts)
    torch.testing.assert_close(means, reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("env", ["HF_HUB_CACHE", "HF_HOME"])
def test_hub_id_from_offline_cache_equals_transformers(
    hf_folder, packed_input, reference, tmp_path, monkeypatch, env
):
    home = tmp_path / "hf_home"
    cache = home / "hub"
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(env, str(cache if env == "HF_HUB_CACHE" else home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf.put_in_hub_cache(hf_folder, cache, HUB_ID, REVISION)
    before = hf.tree(cache)
    info = HFESM2Backend().describe(HUB_ID)
    assert (info.source, info.name) == (f"{HUB_ID}@{REVISION}", HUB_ID)
    means = embed(HUB_ID, packed_input)
    torch.testing.assert_close(means, reference, rtol=0, atol=1e-5)
    assert hf.tree(cache) == before


def test_hub_id_found_in_cache_when_the_hub_is_unreachable(
    hf_folder, packed_input, reference, hub_cache, monkeypatch
):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    hf.put_in_hub_cache(hf_folder, hub_cache, HUB_ID, REVISION)
    torch.testing.assert_close(embed(HUB_ID, packed_input), reference, rtol=0, atol=1e-5)


def test_pinned_revision_and_load_without_the_hub(hf_folder, hub_cache, monkeypatch):
    hf.put_in_hub_cache(hf_folder, hub_cache, HUB_ID, REVISION)
    backend = HFESM2Backend()
    info = backend.describe(f"{HUB_ID}@{REVISION}")
    assert info.source == f"{HUB_ID}@{REVISION}"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    assert backend.load(info).model.num_layers == 2


def test_fair_esm_pt_and_hf_folder_give_the_same_model(
    fair_model, hf_folder, packed_input, reference, tmp_path
):
    """One set of weights, two loaders, one forward."""
    pt_path = tmp_path / "esm2_tiny.pt"
    write_fair_esm_pt(fair_model, pt_path)
    fair_loaded = ESM2Backend().load(ESM2Backend().describe(str(pt_path)))
    hf_loaded = HFESM2Backend().load(HFESM2Backend().describe(str(hf_folder)))
    theirs, ours = fair_loaded.model.state_dict(), hf_loaded.model.state_dict()
    assert theirs.keys() == ours.keys()
    for key in theirs:
        assert torch.equal(theirs[key], ours[key]), key
    assert hf_loaded.model.lm_head.weight is hf_loaded.model.embed_tokens.weight
    from_pt = embed(str(pt_path), packed_input, ESM2Backend())
    assert torch.equal(from_pt, embed(str(hf_folder), packed_input))
    torch.testing.assert_close(from_pt, reference, rtol=0, atol=1e-5)


def write_fair_esm_pt(model, path: Path) -> None:
    """fair-esm's published layout (cfg.model Namespace, encoder-prefixed weights)."""
    config = argparse.Namespace(
        encoder_layers=model.num_layers,
        encoder_embed_dim=model.embed_dim,
        encoder_attention_heads=model.attention_heads,
        token_dropout=model.token_dropout,
    )
    weights = {f"encoder.sentence_encoder.{k}": v for k, v in model.state_dict().items()}
    torch.save({"cfg": {"model": config}, "model": weights}, path)


def test_sharded_safetensors_with_index(fair_model, tmp_path, packed_input, reference):
    folder = hf.save_hf(fair_model, tmp_path / "sharded", max_shard_size="20KB")
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 1 and (folder / "model.safetensors.index.json").is_file()
    info = HFESM2Backend().describe(str(folder))
    joined = b"".join(shard.read_bytes() for shard in shards)
    assert info.checksum == hashlib.sha256(joined).hexdigest()
    torch.testing.assert_close(embed(str(folder), packed_input), reference, rtol=0, atol=1e-5)


def copy_folder(source: Path, destination: Path) -> Path:
    destination.mkdir()
    for path in source.iterdir():
        (destination / path.name).write_bytes(path.read_bytes())
    return destination


def hub_style_names(name: str) -> str:
    """The names the published facebook/esm2 safetensors use (LayerNorm weight/bias),
    where transformers 5 writes legacy gamma/beta."""
    return name.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
        "LayerNorm.beta", "LayerNorm.bias"
    )


@pytest.mark.parametrize("rotary", ["per_layer", "model_level", "absent"])
def test_name_variants_and_rotary_placement(hf_folder, tmp_path, packed_input, reference, rotary):
    folder = copy_folder(hf_folder, tmp_path / "variant")
    stored = load_file(folder / "model.safetensors")
    rotary = {name: stored.pop(name) for name in list(stored) if "inv_freq" in name}
    inv_freq = next(iter(rotary.values()))
    renamed = {hub_style_names(name): tensor for name, tensor in stored.items()}
    renamed["esm.embeddings.position_ids"] = torch.arange(1026)[None]  # older transformers
    if rotary == "per_layer":
        for i in range(2):
            renamed[f"esm.encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq"] = (
                inv_freq.clone()
            )
    elif rotary == "model_level":
        renamed["esm.rotary_embeddings.inv_freq"] = inv_freq
    save_file(renamed, folder / "model.safetensors", metadata={"format": "pt"})
    torch.testing.assert_close(embed(str(folder), packed_input), reference, rtol=0, atol=1e-5)


def test_config_as_published_for_facebook_esm2(hf_folder, tmp_path, packed_input, reference):
    """The fields of facebook/esm2_*'s config.json (written by transformers 4.25), at
    this model's sizes: no rope_theta, hidden_act and torch_dtype present."""
    folder = copy_folder(hf_folder, tmp_path / "published")
    published = {
        "architectures": ["EsmForMaskedLM"],
        "attention_probs_dropout_prob": 0.0,
        "classifier_dropout": None,
        "emb_layer_norm_before": False,
        "esmfold_config": None,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "is_folding_model": False,
        "layer_norm_eps": 1e-05,
        "mask_token_id": 32,
        "max_position_embeddings": 1026,
        "model_type": "esm",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "pad_token_id": 1,
        "position_embedding_type": "rotary",
        "token_dropout": True,
        "torch_dtype": "float32",
        "transformers_version": "4.25.0.dev0",
        "use_cache": True,
        "vocab_list": None,
        "vocab_size": 33,
    }
    (folder / "config.json").write_text(json.dumps(published))
    torch.testing.assert_close(embed(str(folder), packed_input), reference, rtol=0, atol=1e-5)


def test_stored_rotary_frequencies_are_kept(hf_folder, tmp_path):
    """fair-esm's checkpoints carry fp16-rounded inv_freq; the module keeps what is stored."""
    folder = copy_folder(hf_folder, tmp_path / "fp16_rotary")
    stored = load_file(folder / "model.safetensors")
    name = next(name for name in stored if "inv_freq" in name)
    rounded = stored[name].half().float()
    assert not torch.equal(rounded, stored[name])
    stored[name] = rounded
    save_file(stored, folder / "model.safetensors", metadata={"format": "pt"})
    model = HFESM2Backend().load(HFESM2Backend().describe(str(folder))).model
    for layer in model.layers:
        assert torch.equal(layer.self_attn.rot_emb.inv_freq, rounded)


def test_packed_forward_uses_stored_fp16_rounded_rotary(make_esm2, packing, tmp_path):
    model = make_esm2(1, 128, 2, seed=4)
    with torch.no_grad():  # sharper attention, so rotary angles matter
        model.layers[0].self_attn.q_proj.weight.mul_(4)
        model.layers[0].self_attn.k_proj.weight.mul_(4)
    folder = hf.save_hf(model, tmp_path / "fp16_rotary")
    stored = load_file(folder / "model.safetensors")
    for name in [name for name in stored if "inv_freq" in name]:
        stored[name] = stored[name].half().float()
    save_file(stored, folder / "model.safetensors", metadata={"format": "pt"})
    sequence = "".join("ACDEFGHIKLMNPQRSTVWY"[(i * 7) % 20] for i in range(600))
    input_ids, cu_seqlens, max_seqlen, parts = packing.pack([sequence])
    means = embed(str(folder), (input_ids, cu_seqlens, max_seqlen))
    reference = hf.transformers_means(folder, parts)
    torch.testing.assert_close(means, reference, rtol=0, atol=1e-5)


def test_pytorch_model_bin(hf_folder, tmp_path, packed_input, reference):
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "config.json").write_bytes((hf_folder / "config.json").read_bytes())
    torch.save(load_file(hf_folder / "model.safetensors"), folder / "pytorch_model.bin")
    torch.testing.assert_close(embed(str(folder), packed_input), reference, rtol=0, atol=1e-5)


def test_pytorch_model_bin_with_pickled_objects_is_refused(hf_folder, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_bytes((hf_folder / "config.json").read_bytes())
    torch.save({"weights": argparse.Namespace(a=1)}, folder / "pytorch_model.bin")
    message = refusal(str(folder))
    assert "refuses to unpickle" in message and "pytorch_model.bin" in message


def test_base_model_without_heads_fills_them_deterministically(fair_model, tmp_path, packed_input):
    """EsmModel checkpoints have a pooler and no LM head: the pooler is ignored, the
    heads embeddings do not use are zeros (LayerNorm weight ones)."""
    folder = tmp_path / "base"
    hf.to_transformers(fair_model).esm.save_pretrained(folder)
    model = HFESM2Backend().load(HFESM2Backend().describe(str(folder))).model
    assert torch.count_nonzero(model.lm_head.dense.weight) == 0
    assert torch.count_nonzero(model.lm_head.bias) == 0
    assert torch.equal(model.lm_head.layer_norm.weight, torch.ones(32))
    assert torch.equal(
        model.contact_head.regression.weight, fair_model.contact_head.regression.weight
    )
    assert torch.equal(model.layers[1].fc2.weight, fair_model.layers[1].fc2.weight)


def refusal(spec: str) -> str:
    with pytest.raises(ModelLoadError) as caught:
        HFESM2Backend().describe(spec)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("position_embedding_type", "absolute", "position_embedding_type 'absolute'"),
        ("hidden_act", "relu", "hidden_act 'relu'"),
        ("layer_norm_eps", 1e-12, "layer_norm_eps 1e-12"),
        ("emb_layer_norm_before", True, "emb_layer_norm_before True"),
        ("intermediate_size", 100, "intermediate_size 100"),
        ("vocab_size", 34, "vocab_size 34"),
        ("mask_token_id", 31, "mask_token_id 31"),
        ("pad_token_id", 0, "pad_token_id 0"),
        ("rope_theta", 500000.0, "rope_theta 500000.0"),
        ("is_folding_model", True, "is_folding_model True"),
        ("is_decoder", True, "is_decoder True"),
        ("model_type", "bert", "model_type 'bert'"),
        ("vocab_list", list(reversed(hf.get_default_vocab_list())), "vocab_list"),
        ("num_attention_heads", 5, "num_attention_heads 5"),
    ],
)
def test_unsupported_architecture_is_refused_by_name(hf_folder, tmp_path, field, value, named):
    folder = copy_folder(hf_folder, tmp_path / "other")
    hf.edit_config(folder, **{field: value})
    message = refusal(str(folder))
    assert named in message and "not" in message


def test_absent_position_embedding_type_means_absolute(hf_folder, tmp_path):
    folder = copy_folder(hf_folder, tmp_path / "other")
    config = json.loads((folder / "config.json").read_text())
    del config["position_embedding_type"]
    (folder / "config.json").write_text(json.dumps(config))
    assert "position_embedding_type 'absolute' " in refusal(str(folder))


def test_vocab_txt_in_another_order_is_refused(hf_folder, tmp_path):
    folder = copy_folder(hf_folder, tmp_path / "vocab")
    tokens = (folder / "vocab.txt").read_text().split()
    tokens[4], tokens[5] = tokens[5], tokens[4]
    (folder / "vocab.txt").write_text("\n".join(tokens))
    assert "first difference at token 4" in refusal(str(folder))


def test_missing_and_unexpected_weights_are_named(hf_folder, tmp_path):
    folder = copy_folder(hf_folder, tmp_path / "weights")
    stored = load_file(folder / "model.safetensors")
    del stored["esm.encoder.layer.1.intermediate.dense.weight"]
    stored["classifier.dense.weight"] = torch.zeros(2, 2)
    save_file(stored, folder / "model.safetensors", metadata={"format": "pt"})
    message = refusal(str(folder))
    assert "1 weights missing (encoder.layer.1.intermediate.dense.weight)" in message
    assert "1 unexpected (classifier.dense.weight)" in message


def test_a_weight_of_the_wrong_shape_is_named(hf_folder, tmp_path):
    folder = copy_folder(hf_folder, tmp_path / "shape")
    stored = load_file(folder / "model.safetensors")
    stored["esm.encoder.layer.0.output.dense.bias"] = torch.zeros(31)
    save_file(stored, folder / "model.safetensors", metadata={"format": "pt"})
    assert "esm.encoder.layer.0.output.dense.bias has shape [31]" in refusal(str(folder))


def test_rotary_frequencies_of_another_base_are_refused(hf_folder, tmp_path):
    folder = copy_folder(hf_folder, tmp_path / "rope")
    stored = load_file(folder / "model.safetensors")
    name = next(name for name in stored if "inv_freq" in name)
    stored[name] = 1.0 / (500000 ** (torch.arange(0, 8, 2).float() / 8))
    save_file(stored, folder / "model.safetensors", metadata={"format": "pt"})
    assert "not ESM-2's rotary frequencies" in refusal(str(folder))


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("cache_exists", [False, True])
def test_offline_missing_hub_id_is_one_line_and_leaves_nothing(hf_folder, hub_cache, cache_exists):
    if cache_exists:
        hf.put_in_hub_cache(hf_folder, hub_cache, "other-org/other", REVISION)
    before = hf.tree(hub_cache)
    message = refusal("facebook/esm2_t33_650M_UR50D")
    assert f"not in the Hugging Face cache {hub_cache}" in message
    assert "HF_HUB_OFFLINE=1" in message
    assert "`hf download facebook/esm2_t33_650M_UR50D`" in message
    assert "huggingface-cli download facebook/esm2_t33_650M_UR50D" in message
    assert "local folder" in message
    assert hf.tree(hub_cache) == before


def test_unreachable_hub_and_missing_id_is_one_line(hub_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    message = refusal("facebook/esm2_t6_8M_UR50D")
    assert "the hub could not be reached (ConnectError)" in message
    assert hf.tree(hub_cache) == ["<absent>"]


def test_load_refuses_a_snapshot_that_disappeared(hf_folder, hub_cache):
    snapshot = hf.put_in_hub_cache(hf_folder, hub_cache, HUB_ID, REVISION)
    info = HFESM2Backend().describe(HUB_ID)
    (snapshot / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="no longer in the Hugging Face cache"):
        HFESM2Backend().load(info)


def test_load_refuses_a_config_changed_since_describe(hf_folder, tmp_path):
    folder = copy_folder(hf_folder, tmp_path / "changed")
    info = HFESM2Backend().describe(str(folder))
    hf.edit_config(folder, num_hidden_layers=3)
    with pytest.raises(ModelLoadError, match="changed since the run described it"):
        HFESM2Backend().load(info)


def test_random_weights_are_refused(hf_folder):
    with pytest.raises(ModelLoadError, match="random weights come from a fair-esm model name"):
        HFESM2Backend().describe(str(hf_folder), random_weights=True)


def test_load_in_bfloat16_keeps_rotary_in_fp32(hf_folder):
    backend = HFESM2Backend()
    model = backend.load(backend.describe(str(hf_folder)), dtype=torch.bfloat16).model
    assert model.layers[0].fc1.weight.dtype == torch.bfloat16
    assert model.layers[0].self_attn.rot_emb.inv_freq.dtype == torch.float32


def test_matches_folders_and_hub_ids_only(hf_folder, tmp_path):
    backend = HFESM2Backend()
    pt_file = tmp_path / "model.pt"
    pt_file.write_bytes(b"x")
    (tmp_path / "org").mkdir()
    assert backend.matches(str(hf_folder))
    assert backend.matches("facebook/esm2_t6_8M_UR50D")
    assert backend.matches(f"facebook/esm2_t6_8M_UR50D@{REVISION}")
    assert not backend.matches("esm2_t6_8M_UR50D")
    assert not backend.matches("models/esm2_t6_8M_UR50D.pt")
    assert not backend.matches(str(pt_file))
    assert not backend.matches(str(tmp_path))  # a folder without config.json
    assert not backend.matches("a/b/c")
    assert not backend.matches("org--x/name")


def test_find_cached_hf_esm2(hf_folder, hub_cache, tmp_path):
    first = hf.put_in_hub_cache(hf_folder, hub_cache, HUB_ID, REVISION)
    second = hf.put_in_hub_cache(hf_folder, hub_cache, "facebook/esm2_t6_8M_UR50D", "f" * 40)
    bert = copy_folder(hf_folder, tmp_path / "bert")
    hf.edit_config(bert, model_type="bert")
    hf.put_in_hub_cache(bert, hub_cache, "google/bert-tiny", "b" * 40)
    config_only = tmp_path / "config_only"
    config_only.mkdir()
    (config_only / "config.json").write_bytes((hf_folder / "config.json").read_bytes())
    hf.put_in_hub_cache(config_only, hub_cache, "org/no-weights", "c" * 40)
    assert find_cached_hf_esm2() == [
        ("facebook/esm2_t6_8M_UR50D", "f" * 40, second),
        (HUB_ID, REVISION, first),
    ]
    assert find_cached_hf_esm2(tmp_path / "nowhere") == []
