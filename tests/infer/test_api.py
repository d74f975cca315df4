"""The Python API: embed() and resume() through the real engine, read back with the ckpt
reader, equal to fair-esm's own forward; usable with no cli installed."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import esm
import numpy as np
import pytest
import torch

from virnucpro.ckpt import open_embeddings
from virnucpro.data import build_index
from virnucpro.infer import Placement, RunConfig, RunStopped, embed, load_model, resume, run_job
from virnucpro.infer.job import setup
from virnucpro.infer.job.errors import BadInputError, OutputError, RunDirMismatchError
from virnucpro.infer.job.reporting import LoggingReporter
from virnucpro.infer.job.rundir import SPOOL_DIR
from virnucpro.infer.packed import RELEASE_THREAD_NAME

MODEL = "esm2_t6_8M_UR50D"
SEED = 5
AMINO = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", dtype=np.uint8)
TINY = {"model": MODEL, "random_weights": True, "seed": SEED, "device": "cpu", "workers": 0}


def write_proteins(path: Path, count: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    records = [
        f">p{i}\n{AMINO[rng.integers(0, 20, int(rng.integers(8, 60)))].tobytes().decode()}\n"
        for i in range(count)
    ]
    path.write_text("".join(records))
    return path


def fair_esm_means(path: Path, layer: int) -> dict[str, np.ndarray]:
    model = load_model(MODEL, random_weights=True, seed=SEED).model
    converter = esm.data.Alphabet.from_architecture("ESM-1b").get_batch_converter()
    means = {}
    for record in path.read_text().split(">")[1:]:
        name, residues = record.split("\n")[:2]
        _, _, tokens = converter([(name, residues)])
        with torch.no_grad():
            hidden = model(tokens, repr_layers=[layer])["representations"][layer][0]
        means[name] = hidden[1 : len(residues) + 1].mean(0).numpy()
    return means


@pytest.fixture(scope="module")
def proteins(tmp_path_factory) -> Path:
    return write_proteins(tmp_path_factory.mktemp("api") / "proteins.fasta", 12, 3)


def test_embed_equals_fair_esm_and_reads_back(proteins, tmp_path):
    output = embed(proteins, tmp_path / "run", layers=[3, -1], token_budget=200, **TINY)
    assert output == (tmp_path / "run" / "embeddings.h5").resolve()
    expected_last = fair_esm_means(proteins, 6)
    expected_mid = fair_esm_means(proteins, 3)
    with open_embeddings(tmp_path / "run") as result:
        assert list(result.ids) == [f"p{i}" for i in range(12)]
        assert tuple(result.layers) == (3, 6)
        for name, vector in expected_last.items():
            np.testing.assert_allclose(result[name], vector, rtol=0, atol=1e-5)
            np.testing.assert_allclose(
                result.get(name, layer=3), expected_mid[name], rtol=0, atol=1e-5
            )
        assert result.config["model"] == MODEL
        assert result.config["layers"] == [3, 6]


def test_stop_then_resume_equals_an_uninterrupted_run(proteins, tmp_path):
    whole = embed(proteins, tmp_path / "whole", token_budget=120, **TINY)
    asked = iter([False, False, True])
    with pytest.raises(RunStopped, match="virnucpro resume"):
        embed(
            proteins,
            tmp_path / "parts",
            token_budget=120,
            checkpoint_every=1,
            should_stop=lambda: next(asked, True),
            **TINY,
        )
    assert not (tmp_path / "parts" / "embeddings.h5").exists()
    resumed = resume(tmp_path / "parts", device="cpu", workers=0)
    with open_embeddings(whole) as a, open_embeddings(resumed) as b:
        assert a.ids == b.ids
        np.testing.assert_array_equal(a.mean(), b.mean())


def test_weights_are_hashed_once_per_run(monkeypatch, tmp_path, proteins):
    from virnucpro.infer import esm2_loading

    weights = tmp_path / "esm2_small.pt"
    model = load_model(MODEL, random_weights=True, seed=SEED).model
    from argparse import Namespace

    torch.save(
        {
            "cfg": {
                "model": Namespace(
                    encoder_layers=6,
                    encoder_embed_dim=320,
                    encoder_attention_heads=20,
                    token_dropout=True,
                )
            },
            "model": {f"encoder.sentence_encoder.{k}": v for k, v in model.state_dict().items()},
        },
        weights,
    )
    calls = []
    real = esm2_loading.sha256_of_file
    monkeypatch.setattr(
        esm2_loading, "sha256_of_file", lambda path: calls.append(path) or real(path)
    )
    embed(proteins, tmp_path / "run", model=str(weights), device="cpu", workers=0)
    assert calls == [weights]


def test_errors_are_typed_and_leave_nothing_behind(tmp_path):
    bad = tmp_path / "bad.fasta"
    bad.write_text("not fasta at all\n")
    with pytest.raises(BadInputError) as caught:
        embed(bad, tmp_path / "run", **TINY)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "run").exists()


def test_another_run_in_the_directory_is_refused_naming_the_difference(proteins, tmp_path):
    embed(proteins, tmp_path / "run", **TINY)
    again = embed(proteins, tmp_path / "run", **TINY)
    assert again.is_file()
    with pytest.raises(RunDirMismatchError, match=r"seed 5 -> 6"):
        embed(proteins, tmp_path / "run", **{**TINY, "seed": 6})


def test_notices_reach_the_logger(proteins, tmp_path, caplog):
    embed(proteins, tmp_path / "run", **TINY)
    embed(proteins, tmp_path / "run", force=True, **TINY)
    assert any("--force" in r.getMessage() for r in caplog.records if r.name == "virnucpro")
    assert LoggingReporter.logger.name == "virnucpro"
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(moved) == 1 and (moved[0] / "embeddings.h5").is_file()


def test_api_works_without_the_cli(proteins, tmp_path):
    """data, ckpt and infer alone: the cli, typer and rich cannot be imported (the nox
    session of infer installs no cli at all; here its plugin is blocked too)."""
    script = textwrap.dedent(
        f"""
        import sys

        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("typer", "rich") or name.startswith("virnucpro.cli"):
                    raise ImportError(f"{{name}} is not installed here")

        sys.meta_path.insert(0, Refuse())
        from virnucpro.infer import embed
        from virnucpro.ckpt import open_embeddings
        path = embed({str(proteins)!r}, {str(tmp_path / "run")!r}, **{TINY!r})
        with open_embeddings(path) as result:
            print(len(result), result.mean().shape)
        """
    )
    env = {**os.environ, "VIRNUCPRO_PLUGINS_BLOCK": "virnucpro-cli"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["12", "(12,", "320)"]


def test_the_run_says_what_happened_to_odd_input(tmp_path):
    odd = tmp_path / "odd.fasta"
    odd.write_text(">a pos 1\nMKT AYI 123\n>b\nMKJ*LL\n>c\n" + "A" * 50 + "\n>d\nMKV\n")
    result = run_job(
        RunConfig(inputs=(odd,), model=MODEL, random_weights=True, seed=SEED, max_length=40),
        tmp_path / "run",
        Placement(device="cpu", workers=0),
    )
    assert result.notes == (
        "1 sequences longer than 40 residues truncated to 40 residues (c)",
        "2 sequences held non-standard characters (a, b): ' ' x2 dropped, '*' x1 <unk>, "
        "'1' x1 dropped, '2' x1 dropped, '3' x1 dropped, 'J' x1 <unk>",
    )
    with open_embeddings(result.output) as embedded:
        assert embedded.config["quality"]["over_max_length"] == 1
        assert embedded.lengths.tolist() == [6, 6, 40, 3]
    with pytest.raises(BadInputError, match="record #1 'a' holds non-standard") as caught:
        embed(odd, tmp_path / "strict", strict=True, **TINY)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "strict").exists()


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    path.write_bytes(data)


def test_checkpoints_go_after_a_verified_merge_and_a_damaged_output_is_said(
    proteins, tmp_path, caplog
):
    removed = embed(proteins, tmp_path / "removed", **TINY)
    assert not (tmp_path / "removed" / "checkpoints").exists()
    kept = embed(proteins, tmp_path / "kept", keep_checkpoints=True, **TINY)
    assert any((tmp_path / "kept" / "checkpoints").glob("rank_*/*.h5"))
    with open_embeddings(kept) as result:
        expected = result.mean()
    _flip_bytes(kept)
    assert resume(tmp_path / "kept", device="cpu", workers=0) == kept
    assert any("the output is damaged" in r.getMessage() for r in caplog.records)
    with open_embeddings(kept) as result:
        np.testing.assert_array_equal(result.mean(), expected)
    _flip_bytes(removed)
    with pytest.raises(OutputError, match="checkpoints were removed after the merge"):
        resume(tmp_path / "removed", device="cpu", workers=0)


def test_a_damaged_per_token_output_is_rebuilt_from_its_parts_without_recomputing(
    proteins, tmp_path, caplog
):
    run_dir = tmp_path / "run"
    output = embed(proteins, run_dir, pooling=["mean", "per-token"], **TINY)
    assert not (run_dir / "checkpoints").exists()
    with open_embeddings(output) as result:
        expected = {i: result.get(i, pooling="per_token") for i in result.ids}
    _flip_bytes(output)
    caplog.clear()
    assert resume(run_dir, device="cpu", workers=0) == output
    said = [r.getMessage() for r in caplog.records]
    assert any("the output is damaged" in m for m in said)
    assert any("checkpoints restored from the output's per-token parts" in m for m in said)
    with open_embeddings(output) as result:
        for name, values in expected.items():
            np.testing.assert_array_equal(result.get(name, pooling="per_token"), values)


def test_running_again_over_a_deleted_per_token_output_rebuilds_it_from_its_parts(
    proteins, tmp_path
):
    """The same `run` again, its output deleted and its checkpoints gone after the merge:
    the parts hold every row, so it continues (no "stopped at 0/N") and computes none."""
    run_dir = tmp_path / "run"
    config = RunConfig(
        inputs=(proteins,), model=MODEL, random_weights=True, seed=SEED, pooling=("per-token",)
    )
    here = Placement(device="cpu", workers=0)
    first = run_job(config, run_dir, here)
    (run_dir / "embeddings.h5").unlink()
    again = run_job(config, run_dir, here)
    assert again.new_sequences == 0 and again.sequences == first.sequences
    with open_embeddings(first.output) as result:
        assert len(result) == first.sequences


def test_a_checkpoint_damaged_before_the_merge_fails_the_check_and_resume_recomputes_it(
    proteins, tmp_path
):
    """A per-token merge leaves the parts' checksums to the check after it (each byte
    is read once): damage the merge did not hash is still found before anything is
    removed, and resume sets the file aside and computes its rows again."""
    import h5py

    from virnucpro.infer.builtin_writers import Hdf5Writer

    run_dir = tmp_path / "run"
    output = embed(proteins, run_dir, pooling=["per-token"], keep_checkpoints=True, **TINY)
    with open_embeddings(output) as result:
        expected = {i: result.get(i, pooling="per_token") for i in result.ids}
    output.unlink()
    for part in (run_dir / "embeddings_per_token").iterdir():
        part.unlink()
    (damaged,) = run_dir.glob("checkpoints/rank_*/*.h5")
    with h5py.File(damaged, "r") as f:
        offset = f["layer_6/per_token"].id.get_offset()
    with open(damaged, "r+b") as f:
        f.seek(offset + 100)
        f.write(b"\xff" * 8)
    writer = Hdf5Writer()
    writer.write(run_dir, {})
    assert "is damaged (its data checksum differs)" in writer.check(run_dir)
    assert resume(run_dir, device="cpu", workers=0) == output
    assert [p.name for p in (run_dir / "quarantine").iterdir()] == [f"rank_0__{damaged.name}"]
    with open_embeddings(output) as result:
        for name, values in expected.items():
            np.testing.assert_array_equal(result.get(name, pooling="per_token"), values)


def test_float16_storage_is_the_float32_run_cast_and_reads_as_stored(proteins, tmp_path):
    from virnucpro.ckpt import verify_output
    from virnucpro.infer.job.errors import ConfigError

    options = dict(layers=[2, 6], pooling=["mean", "max", "bos", "per-token"], token_budget=200)
    wide = embed(proteins, tmp_path / "f32", **options, **TINY)
    half = embed(
        proteins, tmp_path / "f16", store_dtype="float16", keep_checkpoints=True, **options, **TINY
    )
    assert verify_output(tmp_path / "f16") is None
    with open_embeddings(wide) as a, open_embeddings(half) as b:
        assert (a.store_dtype, b.store_dtype) == (np.float32, np.float16)
        assert b.config["store_dtype"] == "float16"
        for layer in (2, 6):
            for pooling in ("mean", "max", "bos"):
                stored = b.dataset(layer, pooling)[()]
                assert stored.dtype == np.float16
                assert np.array_equal(stored, a.dataset(layer, pooling)[()].astype(np.float16))
            for name in a.ids:
                rows = b.get(name, layer, "per_token")
                assert rows.dtype == np.float16
                assert np.array_equal(rows, a.get(name, layer, "per_token").astype(np.float16))
        assert b.mean(dtype=np.float32).dtype == np.float32
        assert np.array_equal(b.mean(dtype=np.float32), b.mean().astype(np.float32))
    import h5py

    for path in (tmp_path / "f16" / "checkpoints").glob("rank_*/*.h5"):
        with h5py.File(path, "r") as f:
            assert f["layer_6/mean"].dtype == np.float16
            assert f["layer_6/per_token_offsets"].dtype == np.int64
    with pytest.raises(ConfigError, match="bfloat16 cannot be stored readably"):
        embed(proteins, tmp_path / "bf16", store_dtype="bfloat16", **TINY)


def test_force_with_bad_input_keeps_the_old_run_in_place(proteins, tmp_path):
    kept = embed(proteins, tmp_path / "run", **TINY)
    bad = tmp_path / "bad.fasta"
    bad.write_text("junk\n")
    with pytest.raises(BadInputError):
        embed(bad, tmp_path / "run", force=True, **TINY)
    assert kept.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]


def test_a_live_pool_of_compile_workers_is_shut_down_once_the_batches_are_done(proteins, tmp_path):
    """Inductor's compile processes (a GPU host has a pool of them) are shut down on a
    background thread when a session's batches are done, so the exit does not wait for
    them; the run's output is the same."""
    from torch._inductor import config
    from torch._inductor.async_compile import AsyncCompile, _pool_set

    with config.patch(compile_threads=2):
        AsyncCompile.process_pool()
        AsyncCompile.wait_pool_ready()
    assert _pool_set
    output = embed(proteins, tmp_path / "run", **TINY)
    for thread in threading.enumerate():
        if thread.name == RELEASE_THREAD_NAME:
            thread.join()
    assert not _pool_set
    expected = fair_esm_means(proteins, 6)
    with open_embeddings(output) as result:
        for name, mean in expected.items():
            np.testing.assert_allclose(result[name], mean, rtol=0, atol=1e-5)


@pytest.mark.parametrize("gz", [False, True])
def test_force_indexes_a_plain_input_once(proteins, tmp_path, monkeypatch, gz):
    """--force checks the inputs before moving the old run aside; a plain input's index
    is then kept, and only a gzip input (whose spool belongs in the run directory) is
    indexed again."""
    source = proteins
    if gz:
        source = tmp_path / "proteins.fasta.gz"
        source.write_bytes(gzip.compress(proteins.read_bytes()))
    first = embed(source, tmp_path / "run", **TINY)
    built = []

    def counted(*args, **kwargs):
        built.append(args)
        return build_index(*args, **kwargs)

    monkeypatch.setattr(setup, "build_index", counted)
    again = embed(source, tmp_path / "run", force=True, **TINY)
    assert len(built) == (2 if gz else 1)
    assert (tmp_path / "run" / SPOOL_DIR).is_dir() == gz
    replaced = next(p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-"))
    assert first.parent != replaced and (replaced / first.name).is_file()
    with open_embeddings(replaced) as before, open_embeddings(again) as after:
        assert list(before.ids) == list(after.ids)
        for name in before.ids:
            np.testing.assert_array_equal(before[name], after[name])


def test_the_output_is_assembled_while_the_run_computes(tmp_path, monkeypatch, caplog):
    """Checkpoints that land during the run have their rows in embeddings.h5's temporary
    file before the last batch; the result is the run's, and no temporary file is left."""
    import logging

    from virnucpro.ckpt import assembly

    monkeypatch.setattr(assembly, "POLL_S", 0.01)
    proteins = write_proteins(tmp_path / "many.fasta", 150, 4)
    caplog.set_level(logging.DEBUG, logger="virnucpro.ckpt.merge")
    output = embed(proteins, tmp_path / "run", token_budget=200, checkpoint_every=10, **TINY)
    (said,) = [r.getMessage() for r in caplog.records if "in place before" in r.getMessage()]
    in_place = int(said.split()[1])
    assert 0 < in_place <= 150 and said.endswith("of 150 rows were in place before the last batch")
    assert not list((tmp_path / "run").glob(".*.tmp"))
    expected = fair_esm_means(proteins, 6)
    with open_embeddings(output) as result:
        for name, vector in expected.items():
            np.testing.assert_allclose(result[name], vector, rtol=0, atol=1e-5)
