"""--gpus names physical GPUs: ``--gpus 2,3`` must run on GPUs 2 and 3 (lesson 7)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virnucpro.cli.options import parse_layers, parse_token_budget
from virnucpro.infer.job.config import resolve_layers
from virnucpro.infer.job.gpus import GpuDevice, GpuSpec, parse_gpu_spec, resolve_gpus, visible_ids


def test_parse_spec():
    assert parse_gpu_spec("all") == GpuSpec(None)
    assert parse_gpu_spec(" ALL ") == GpuSpec(None)
    assert parse_gpu_spec("2,3") == GpuSpec(("2", "3"))
    assert parse_gpu_spec("03, 1") == GpuSpec(("3", "1"))
    assert parse_gpu_spec("GPU-8f1a") == GpuSpec(("GPU-8f1a",))


@pytest.mark.parametrize("text", ["", "1,", ",1", "-1", "a", "0,0", "1,01", "0 1"])
def test_parse_spec_rejects(text):
    with pytest.raises(ValueError):
        parse_gpu_spec(text)


def test_physical_ids_without_cuda_visible_devices():
    assert resolve_gpus(parse_gpu_spec("2,3"), None, 4) == [GpuDevice("2", 2), GpuDevice("3", 3)]
    assert resolve_gpus(parse_gpu_spec("3,0"), None, 4) == [GpuDevice("3", 3), GpuDevice("0", 0)]
    assert resolve_gpus(parse_gpu_spec("all"), None, 2) == [GpuDevice("0", 0), GpuDevice("1", 1)]


def test_physical_ids_under_cuda_visible_devices():
    visible = "4,5,6,7"
    assert resolve_gpus(parse_gpu_spec("6,5"), visible, 4) == [
        GpuDevice("6", 2),
        GpuDevice("5", 1),
    ]
    assert resolve_gpus(parse_gpu_spec("all"), visible, 4) == [
        GpuDevice(str(gpu), ordinal) for ordinal, gpu in enumerate(range(4, 8))
    ]
    with pytest.raises(ValueError) as caught:
        resolve_gpus(parse_gpu_spec("0,5"), visible, 4)
    assert (
        str(caught.value)
        == "GPU 0 not available (visible: 4, 5, 6, 7; CUDA_VISIBLE_DEVICES=4,5,6,7)"
    )


def test_unavailable_gpus():
    with pytest.raises(ValueError) as caught:
        resolve_gpus(parse_gpu_spec("2,7"), None, 4)
    assert (
        str(caught.value) == "GPU 7 not available (visible: 0, 1, 2, 3; 4 GPU(s) on this machine)"
    )
    for visible, count in ((None, 0), ("", 4), ("-1", 4)):
        with pytest.raises(ValueError, match="no GPU is visible"):
            resolve_gpus(parse_gpu_spec("all"), visible, count)


def test_visible_ids_follow_cuda_rules():
    assert visible_ids("1,bogus,2", 8) == ["1"]
    assert visible_ids("3,2,1", 2) == ["3", "2"]
    assert visible_ids("GPU-aa,GPU-bb", 2) == ["GPU-aa", "GPU-bb"]


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_resolve_keeps_order_and_maps_ordinals(data):
    physical = data.draw(st.lists(st.integers(0, 15), min_size=1, max_size=8, unique=True))
    chosen = data.draw(st.permutations(physical).flatmap(
        lambda p: st.integers(1, len(p)).map(lambda k: p[:k])
    ))  # fmt: skip
    env = ",".join(map(str, physical))
    devices = resolve_gpus(parse_gpu_spec(",".join(map(str, chosen))), env, len(physical))
    assert [d.physical_id for d in devices] == [str(g) for g in chosen]
    assert [physical[d.ordinal] for d in devices] == chosen


def test_token_budget_and_layers():
    assert parse_token_budget("auto") is None
    assert parse_token_budget("4096") == 4096
    assert parse_layers("last") is None
    assert parse_layers("-1,30") == (-1, 30)
    for text, message in (("", "is empty"), ("1,1", "more than once"), ("1;2", "not a list")):
        with pytest.raises(ValueError, match=message):
            parse_layers(text)
    for text in ("0", "-3", "lots"):
        with pytest.raises(ValueError, match="positive number of tokens"):
            parse_token_budget(text)
    assert resolve_layers(None, 36) == (36,)
    assert resolve_layers((-1, 0, 30), 36) == (0, 30, 36)
    with pytest.raises(ValueError, match="layer 37 does not exist"):
        resolve_layers((37,), 36)
    with pytest.raises(ValueError, match="name the same layer twice"):
        resolve_layers((-1, 36), 36)
