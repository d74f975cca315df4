"""RunConfig, Placement and RunManifest: one place for defaults, validation that names
the option, and a manifest that round-trips into the configuration that made it."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from virnucpro.infer import api
from virnucpro.infer.job.config import Placement, RunConfig, resolve_layers
from virnucpro.infer.job.errors import ConfigError
from virnucpro.infer.job.gpus import GpuSpec
from virnucpro.infer.job.manifest import RunManifest


def test_api_keywords_take_the_config_defaults():
    """embed()'s defaults are RunConfig's and Placement's own, not copies."""
    parameters = inspect.signature(api.embed).parameters
    config = RunConfig(inputs=("x.fa",))
    placement = Placement()
    for name, parameter in parameters.items():
        if hasattr(config, name) and name != "inputs":
            assert parameter.default == getattr(config, name), name
        elif hasattr(placement, name):
            assert parameter.default == getattr(placement, name), name
    config_fields = set(RunConfig.__dataclass_fields__) - {"inputs"}
    assert config_fields <= set(parameters), config_fields - set(parameters)
    assert set(Placement.__dataclass_fields__) <= set(parameters)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"inputs": ()}, "inputs"),
        ({"pooling": ("median",)}, "pooling"),
        ({"precision": "fp8"}, "precision"),
        ({"token_budget": 0}, "token_budget"),
        ({"max_length": -1}, "max_length"),
        ({"checkpoint_interval": 0}, "checkpoint_interval"),
        ({"layers": (3, 3)}, "layers"),
        ({"chunk_size": 400}, "chunk_size"),
        ({"input_type": "rna"}, "input_type"),
    ],
)
def test_bad_values_are_refused_naming_the_option(options, named):
    values = {"inputs": ("x.fa",), **options}
    with pytest.raises(ConfigError, match=f"^{named}: ") as caught:
        RunConfig(**values)
    assert "\n" not in str(caught.value)


def test_pooling_names_are_normalised_and_deduplicated():
    config = RunConfig(inputs=("x.fa",), pooling=("per-token", "mean", "per_token"))
    assert config.pooling == ("per_token", "mean")


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [("all", GpuSpec(None)), ("2,3", GpuSpec(("2", "3"))), ([1, 0], GpuSpec(("1", "0")))],
)
def test_placement_parses_gpus(gpus, expected):
    assert Placement(gpus=gpus).gpus == expected


def test_placement_refuses_gpus_on_the_cpu():
    with pytest.raises(ConfigError, match="gpus"):
        Placement(device="cpu", gpus="0")


@pytest.mark.parametrize(
    ("layers", "num_layers", "expected"),
    [(None, 6, (6,)), ((-1, 0), 6, (0, 6)), ((3, -2), 6, (3, 5))],
)
def test_resolve_layers(layers, num_layers, expected):
    assert resolve_layers(layers, num_layers) == expected


@pytest.mark.parametrize("layers", [(7,), (-8,), (6, -1)])
def test_resolve_layers_refuses(layers):
    with pytest.raises(ConfigError, match="layers"):
        resolve_layers(layers, 6)


manifests = st.builds(
    RunManifest,
    inputs=st.lists(st.text("abc_", min_size=1), min_size=1, max_size=3).map(
        lambda names: [f"/data/{n}.fa" for n in names]
    ),
    input_sizes=st.lists(st.integers(0, 10**9), max_size=3),
    input_fingerprint=st.text("0123456789abcdef", min_size=8, max_size=8),
    input_type=st.sampled_from(["protein", "dna"]),
    chunk_size=st.sampled_from([300, 500]),
    num_sequences=st.integers(1, 10**7),
    model=st.sampled_from(["esm2_t6_8M_UR50D", "/w/esm2.pt"]),
    model_source=st.just("random"),
    model_backend=st.just("esm2"),
    model_checksum=st.none() | st.text("0123456789abcdef", min_size=64, max_size=64),
    random_weights=st.booleans(),
    seed=st.none() | st.integers(0, 99),
    num_layers=st.integers(1, 48),
    embed_dim=st.sampled_from([320, 1280]),
    layers=st.lists(st.integers(0, 48), min_size=1, max_size=3, unique=True).map(sorted),
    pooling=st.lists(st.sampled_from(["mean", "bos", "per_token"]), min_size=1, unique=True),
    precision=st.sampled_from(["fp32", "bf16", "fp16"]),
    token_budget=st.integers(1, 262_144),
    token_budget_auto=st.booleans(),
    max_length=st.integers(300, 4096),
    long=st.sampled_from(["truncate", "full", "window"]),
    window_overlap=st.integers(0, 299),
    checkpoint_every=st.integers(1, 10**6),
    checkpoint_interval=st.floats(0.5, 1e5),
    checkpoint_bytes=st.integers(1, 2**40),
    output_format=st.just("hdf5"),
    store_dtype=st.sampled_from(["float32", "float16"]),
    compression=st.sampled_from(["none", "lzf", "gzip"]),
    keep_checkpoints=st.booleans(),
    strict=st.booleans(),
    quality=st.just({"over_max_length": 0, "nonstandard_line": ""}),
    versions=st.just({"torch": "2.13.0"}),
)


@given(manifests)
def test_manifest_round_trips(manifest):
    assert RunManifest.from_dict(manifest.to_dict()) == manifest
    config = manifest.config
    assert [str(p) for p in config.inputs] == manifest.inputs
    assert list(config.layers or ()) == manifest.layers
    assert list(config.pooling) == manifest.pooling
    assert config.precision == manifest.precision
    assert config.token_budget == (None if manifest.token_budget_auto else manifest.token_budget)
    assert (config.max_length, config.checkpoint_every) == (
        manifest.max_length,
        manifest.checkpoint_every,
    )
    assert (config.store_dtype, config.compression) == (
        manifest.store_dtype,
        manifest.compression,
    )
    assert (config.strict, config.keep_checkpoints) == (manifest.strict, manifest.keep_checkpoints)


def test_manifest_missing_keys_are_named():
    values = RunManifest.from_dict(
        {
            **{name: None for name in RunManifest.__dataclass_fields__},
            "layers": [6],
        }
    ).to_dict()
    del values["embed_dim"], values["precision"]
    with pytest.raises(ConfigError, match="lacks embed_dim, precision"):
        RunManifest.from_dict(values)


def test_manifest_of_version_0_1_is_read(tmp_path: Path):
    old = {
        "inputs": ["/d/x.fa"],
        "input_sizes": [10],
        "input_fingerprint": "ab",
        "input_type": "protein",
        "chunk_size": 300,
        "num_sequences": 3,
        "model": "esm2_t6_8M_UR50D",
        "model_checksum": None,
        "random_weights": True,
        "seed": 0,
        "layers": [6],
        "pooling": ["mean"],
        "precision": "fp32",
        "token_budget": 4096,
        "token_budget_auto": True,
        "max_length": 1022,
        "embed_dim": 320,
        "checkpoint_every": 10,
        "checkpoint_interval": 300.0,
        "versions": {},
    }
    manifest = RunManifest.from_dict(old)
    assert (manifest.model_backend, manifest.output_format, manifest.num_layers) == (
        "esm2",
        "hdf5",
        6,
    )
