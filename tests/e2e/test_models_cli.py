"""`virnucpro run` on ESM-2 in Hugging Face format (a folder, a hub id from an offline
cache) equals transformers' EsmModel; `virnucpro models`; weights that cannot be had or
cannot be run exactly are refused in one line with their exit code."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from virnucpro.ckpt import open_embeddings
from virnucpro.cli.errors import ExitCode, exit_code_of
from virnucpro.cli.main import main
from virnucpro.infer.catalog import check_fits, model_catalog
from virnucpro.infer.job.errors import ModelTooLargeError
from virnucpro.infer.models import ModelInfo

pytest.importorskip("transformers", reason="transformers is the test-only HF reference")
sys.path.insert(0, str(Path(__file__).parents[1] / "infer"))
hf = importlib.import_module("hf_support")
conftest = importlib.import_module("conftest")

HUB_ID = "tiny-org/esm2_tiny"
REVISION = "89abcdef0123456789abcdef0123456789abcdef"
SEQUENCES = ["MKTVRQERLKSIVRILERSKEPVSGAQ", "AC", "WWLKPTRAAQ" * 4, "GSHMKV"]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    model = conftest.build_tiny_esm2(2, 32, 4, seed=21)
    return hf.save_hf(model, tmp_path_factory.mktemp("hf") / "esm2_tiny")


@pytest.fixture(scope="module")
def fasta(tmp_path_factory):
    path = tmp_path_factory.mktemp("in") / "proteins.fasta"
    path.write_text("".join(f">s{i}\n{seq}\n" for i, seq in enumerate(SEQUENCES)))
    return path


@pytest.fixture(scope="module")
def expected(hf_folder):
    rows = [conftest.tokens_of(seq) for seq in SEQUENCES]
    return hf.transformers_means(hf_folder, rows).numpy()


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf_cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def run(args: list[str]) -> int:
    return main(["run", *args, "--device", "cpu", "--workers", "0"])


def test_run_on_a_local_folder_equals_transformers(hf_folder, fasta, expected, tmp_path):
    assert run([str(fasta), "-o", str(tmp_path / "r"), "--model", str(hf_folder)]) == 0
    with open_embeddings(tmp_path / "r") as result:
        np.testing.assert_allclose(result.mean(), expected, rtol=0, atol=1e-5)
        assert result.config["model_backend"] == "hf-esm2"
        assert result.config["model_source"] == str(hf_folder)
        assert len(result.config["model_checksum"]) == 64


def test_run_by_hub_id_from_an_offline_cache(hf_folder, fasta, expected, tmp_path, offline_cache):
    hf.put_in_hub_cache(hf_folder, offline_cache, HUB_ID, REVISION)
    assert run([str(fasta), "-o", str(tmp_path / "r"), "--model", HUB_ID]) == 0
    with open_embeddings(tmp_path / "r") as result:
        np.testing.assert_allclose(result.mean(), expected, rtol=0, atol=1e-5)
        assert REVISION in result.config["model_source"]


def test_hub_id_missing_offline_is_one_line_and_leaves_nothing(
    fasta, tmp_path, offline_cache, capsys
):
    code = run([str(fasta), "-o", str(tmp_path / "r"), "--model", "facebook/esm2_t6_8M_UR50D"])
    err = capsys.readouterr().err
    assert code == ExitCode.WEIGHTS_UNAVAILABLE
    assert len(err.strip().splitlines()) == 1 and err.startswith("virnucpro: error: ")
    assert "hf download facebook/esm2_t6_8M_UR50D" in err
    assert not (tmp_path / "r").exists()
    assert not offline_cache.exists() or not any(offline_cache.rglob("*.safetensors"))


def test_unsupported_architecture_is_refused_by_name(hf_folder, fasta, tmp_path, capsys):
    odd = tmp_path / "odd"
    odd.mkdir()
    for path in hf_folder.iterdir():
        (odd / path.name).write_bytes(path.read_bytes())
    hf.edit_config(odd, position_embedding_type="absolute")
    code = run([str(fasta), "-o", str(tmp_path / "r"), "--model", str(odd)])
    err = capsys.readouterr().err
    assert code == ExitCode.WEIGHTS_UNAVAILABLE
    assert "position_embedding_type" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_models_lists_sizes_and_what_is_cached(hf_folder, offline_cache, capsys):
    hf.put_in_hub_cache(hf_folder, offline_cache, "facebook/esm2_t6_8M_UR50D", REVISION)
    assert main(["models", "--json"]) == 0
    listed = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert listed["esm2_t33_650M_UR50D"]["num_layers"] == 33
    assert listed["esm2_t33_650M_UR50D"]["embed_dim"] == 1280
    assert any(REVISION in path for path in listed["esm2_t6_8M_UR50D"]["cached"])
    assert listed["esm2_t36_3B_UR50D"]["cached"] == []
    assert [e.name for e in model_catalog()] == list(listed)
    assert main(["models"]) == 0
    assert "esm2_t48_15B_UR50D" in capsys.readouterr().out


def test_a_model_too_large_for_the_gpu_is_refused_before_the_run():
    info = ModelInfo(
        name="esm2_t48_15B_UR50D",
        source="random",
        num_layers=48,
        embed_dim=5120,
        attention_heads=40,
        num_parameters=15_129_000_000,
        checksum=None,
        random_weights=True,
        seed=0,
    )
    with pytest.raises(ModelTooLargeError) as caught:
        check_fits(info, torch.device("cuda", 0), torch.bfloat16, total=24 * 2**30)
    message = str(caught.value)
    assert "\n" not in message and "needs about 32.4 GiB" in message and "24.0 GiB" in message
    assert "esm2_t36_3B_UR50D" in message and "esm2_t48_15B_UR50D" not in message.split("(")[1]
    assert exit_code_of(caught.value) == ExitCode.MODEL_TOO_LARGE
    check_fits(info, torch.device("cuda", 0), torch.bfloat16, total=80 * 2**30)
