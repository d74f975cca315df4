"""Loading ESM-2 weights: published-format files, fair-esm's cache, download, random."""

from __future__ import annotations

import functools
import hashlib
import http.server
import pathlib
import pickle
import socket
import threading
from argparse import Namespace

import pytest
import torch

from virnucpro.infer import (
    ESM2_ARCHITECTURES,
    ESM2Backend,
    ModelLoadError,
    ModelRegistry,
    PackedESM2,
    fair_esm_cache_dir,
    load_model,
)

REGRESSION_KEYS = ("contact_head.regression.weight", "contact_head.regression.bias")


def write_published(model, path: pathlib.Path, with_regression: bool, **extra) -> None:
    """fair-esm's published layout: cfg.model as a Namespace, encoder-prefixed weights,
    contact regression in a separate `<name>-contact-regression.pt`."""
    state = model.state_dict()
    config = Namespace(
        encoder_layers=model.num_layers,
        encoder_embed_dim=model.embed_dim,
        encoder_attention_heads=model.attention_heads,
        token_dropout=model.token_dropout,
        encoder_ffn_embed_dim=4 * model.embed_dim,
    )
    weights = {
        f"encoder.sentence_encoder.{key}": value
        for key, value in state.items()
        if key not in REGRESSION_KEYS
    }
    torch.save({"cfg": {"model": config}, "model": weights, **extra}, path)
    if with_regression:
        regression = {key: state[key] for key in REGRESSION_KEYS}
        torch.save({"model": regression}, path.with_name(f"{path.stem}-contact-regression.pt"))


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{{name}}.pt"


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"


def assert_same_weights(loaded, model, skip=()):
    mine = loaded.state_dict()
    for key, value in model.state_dict().items():
        if key not in skip:
            assert torch.equal(mine[key], value), key


@pytest.mark.parametrize("with_regression", [True, False])
def test_path_in_published_format(make_esm2, packing, tmp_path, with_regression):
    model = make_esm2(2, 32, 4, seed=21)
    path = tmp_path / "esm2_tiny.pt"
    write_published(model, path, with_regression)
    loaded = load_model(str(path))
    assert loaded.name == "esm2_tiny" and not loaded.random_weights and loaded.seed is None
    assert loaded.checksum == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (loaded.num_layers, loaded.embed_dim) == (2, 32)
    assert_same_weights(loaded.model, model, skip=() if with_regression else REGRESSION_KEYS)
    input_ids, cu_seqlens, max_seqlen, parts = packing.pack(["MKTAYIAK", "G<mask>A"])
    out = PackedESM2(loaded.model)(input_ids, cu_seqlens, max_seqlen, [-1])[2]
    reference = packing.reference(model, parts[0], [2])[2]
    assert (out[: parts[0].numel()] - reference).abs().max().item() <= 1e-5


def test_file_name_without_esm2_prefix_still_loads(make_esm2, tmp_path):
    model = make_esm2(1, 16, 2, seed=3)
    path = tmp_path / "my_finetune.pt"
    write_published(model, path, with_regression=False)
    loaded = load_model(str(path))
    assert loaded.name == "my_finetune"
    assert_same_weights(loaded.model, model, skip=REGRESSION_KEYS)


def test_pickled_object_is_refused(make_esm2, tmp_path):
    path = tmp_path / "esm2_evil.pt"
    write_published(make_esm2(1, 16, 2), path, False, note=pathlib.PurePosixPath("/x"))
    with pytest.raises(ModelLoadError, match="refuses to unpickle") as caught:
        load_model(str(path))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"not a checkpoint", "not a torch checkpoint"), (None, "does not exist")],
)
def test_unreadable_or_missing_file(tmp_path, content, message):
    path = tmp_path / "esm2_broken.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=message):
        load_model(str(path))


def test_wrong_layout_is_refused(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(ModelLoadError, match="not an ESM-2 checkpoint in fair-esm's format"):
        load_model(str(path))


def test_missing_weights_are_reported_in_one_line(make_esm2, tmp_path):
    model = make_esm2(1, 16, 2)
    path = tmp_path / "esm2_partial.pt"
    write_published(model, path, False)
    data = torch.load(path, weights_only=False)
    del data["model"]["encoder.sentence_encoder.layers.0.fc1.weight"]
    torch.save(data, path)
    with pytest.raises(ModelLoadError, match="does not build an ESM-2 model") as caught:
        load_model(str(path))
    assert "\n" not in str(caught.value)


def cached_8m(torch_home, with_regression: bool) -> tuple[torch.nn.Module, pathlib.Path]:
    model = load_model("esm2_t6_8M_UR50D", random_weights=True, seed=4).model
    cache = fair_esm_cache_dir()
    assert cache == torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    write_published(model, cache / "esm2_t6_8M_UR50D.pt", with_regression)
    return model, cache / "esm2_t6_8M_UR50D.pt"


@pytest.mark.parametrize("with_regression", [True, False])
def test_name_found_in_fair_esm_cache_needs_no_network(torch_home, with_regression):
    model, path = cached_8m(torch_home, with_regression)
    offline = ESM2Backend(model_url=closed_port_url(), regression_url=closed_port_url())
    loaded = load_model("esm2_t6_8M_UR50D", registry=ModelRegistry([offline]))
    assert loaded.checksum == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.source == str(path)
    assert_same_weights(loaded.model, model, skip=() if with_regression else REGRESSION_KEYS)


def test_name_downloads_into_fair_esm_cache(torch_home, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    model = load_model("esm2_t6_8M_UR50D", random_weights=True, seed=8).model
    write_published(model, served / "esm2_t6_8M_UR50D.pt", with_regression=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        backend = ESM2Backend(
            model_url=base + "/{name}.pt", regression_url=base + "/{name}-contact-regression.pt"
        )
        loaded = load_model("esm2_t6_8M_UR50D", registry=ModelRegistry([backend]))
    finally:
        server.shutdown()
        server.server_close()
    cached = fair_esm_cache_dir() / "esm2_t6_8M_UR50D.pt"
    assert cached.read_bytes() == (served / "esm2_t6_8M_UR50D.pt").read_bytes()
    assert (fair_esm_cache_dir() / "esm2_t6_8M_UR50D-contact-regression.pt").is_file()
    assert_same_weights(loaded.model, model)


def test_offline_error_says_where_to_put_the_file(torch_home):
    offline = ESM2Backend(model_url=closed_port_url(), regression_url=closed_port_url())
    with pytest.raises(ModelLoadError) as caught:
        load_model("esm2_t33_650M_UR50D", registry=ModelRegistry([offline]))
    message = str(caught.value)
    assert "\n" not in message
    assert str(fair_esm_cache_dir()) in message
    assert "put esm2_t33_650M_UR50D.pt there, pass the path" in message
    assert "--random-weights" in message
    assert not (fair_esm_cache_dir() / "esm2_t33_650M_UR50D.pt").exists()


def test_unknown_name_is_refused():
    with pytest.raises(ModelLoadError, match="no model backend understands 'esm2_t99_1T'"):
        load_model("esm2_t99_1T")


def test_random_weights_are_seeded_and_recorded():
    first = load_model("esm2_t6_8M_UR50D", random_weights=True, seed=1)
    again = load_model("esm2_t6_8M_UR50D", random_weights=True, seed=1)
    other = load_model("esm2_t6_8M_UR50D", random_weights=True, seed=2)
    assert first.random_weights and first.seed == 1 and first.checksum is None
    assert first.source == "random"
    assert first.model.lm_head.weight is first.model.embed_tokens.weight
    assert_same_weights(again.model, first.model)
    same = [
        key
        for key, value in first.model.named_parameters()
        if torch.equal(value, other.model.get_parameter(key))
    ]
    assert same == []


def test_random_weights_have_the_published_shapes():
    loaded = load_model("esm2_t12_35M_UR50D", random_weights=True, seed=0)
    arch = ESM2_ARCHITECTURES["esm2_t12_35M_UR50D"]
    model = loaded.model
    assert (model.num_layers, model.embed_dim, model.attention_heads) == arch
    assert model.layers[0].fc1.weight.shape == (4 * arch.embed_dim, arch.embed_dim)
    assert torch.all(model.embed_tokens.weight[model.padding_idx] == 0)
    fc1 = model.layers[3].fc1.weight
    assert abs(fc1.std().item() - arch.embed_dim**-0.5) < 0.01 * arch.embed_dim**-0.5
    assert abs(fc1.mean().item()) < 1e-3
    ln = model.layers[3].final_layer_norm.weight
    assert abs(ln.mean().item() - 1.0) < 0.02 and 0.08 < ln.std().item() < 0.12


def test_every_published_name_has_its_architecture():
    for name, arch in ESM2_ARCHITECTURES.items():
        assert name.startswith(f"esm2_t{arch.num_layers}_")
        assert arch.embed_dim % arch.attention_heads == 0
    assert len(ESM2_ARCHITECTURES) == 6


def test_random_weights_need_a_name(tmp_path):
    with pytest.raises(ModelLoadError, match="random weights need a model name"):
        load_model(str(tmp_path / "x.pt"), random_weights=True)


def test_precision_is_applied_in_place(packing):
    loaded = load_model("esm2_t6_8M_UR50D", random_weights=True, seed=3, dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    reference = load_model("esm2_t6_8M_UR50D", random_weights=True, seed=3)
    input_ids, cu_seqlens, max_seqlen, _ = packing.pack(["MKTAYIAKQRQISFVKSHFSRQ", "GGA"])
    half = PackedESM2(loaded.model)(input_ids, cu_seqlens, max_seqlen, [-1])[6]
    full = PackedESM2(reference.model)(input_ids, cu_seqlens, max_seqlen, [-1])[6]
    cosine = torch.nn.functional.cosine_similarity(half.float(), full, dim=-1)
    assert cosine.min().item() > 0.99


def test_plain_pickle_is_refused_unrun(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "esm2_payload.pt"
    path.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(ModelLoadError, match="plain pickle, which could run code") as caught:
        load_model(str(path))
    assert "\n" not in str(caught.value)
    assert not marker.exists()


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_describe_reads_architecture_and_checksum_without_building(make_esm2, tmp_path):
    path = tmp_path / "esm2_small.pt"
    model = make_esm2(2, 32, 4)
    write_published(model, path, False)
    info = ESM2Backend().describe(str(path))
    assert (info.num_layers, info.embed_dim, info.attention_heads) == (2, 32, 4)
    assert info.checksum == hashlib.sha256(path.read_bytes()).hexdigest()
    own = sum(p.numel() for name, p in model.named_parameters() if "contact" not in name)
    assert info.num_parameters == own
    loaded = ESM2Backend().load(info)
    assert loaded.info is info
