"""Real spawned DataLoader workers: plan order, every record once, CUDA hidden, collator rules."""

import multiprocessing

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from virnucpro.data import (
    PackedBatchDataset,
    SequenceDataset,
    VarlenCollator,
    build_index,
    create_async_dataloader,
    cuda_safe_worker_init,
    plan_batches,
    split_for_rank,
    tokenize,
)


@pytest.fixture
def indexed(write_fasta, random_proteins):
    records = [*random_proteins(120, 1, 400, seed=3), ("long", "M" * 1500)]
    return build_index(write_fasta(records, gz=False)), dict(records)


def check_batch(batch, index, records, max_length):
    cu = batch["cu_seqlens"].tolist()
    assert batch["cu_seqlens"].dtype == torch.int32 and cu[0] == 0
    assert batch["input_ids"].dtype == torch.int64 and batch["input_ids"].dim() == 1
    assert batch["num_sequences"] == len(batch["sequence_ids"]) == len(cu) - 1
    assert batch["max_seqlen"] == max(np.diff(cu))
    for k, i in enumerate(batch["indices"].tolist()):
        assert batch["sequence_ids"][k] == index.ids[i]
        full = records[index.ids[i]]
        kept = full[:max_length]
        expected = [0, *tokenize(kept).tolist(), 2]
        assert batch["input_ids"][cu[k] : cu[k + 1]].tolist() == expected
        assert batch["lengths"][k] == len(kept)
        assert bool(batch["truncated"][k]) == (len(full) > max_length)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("num_workers", [1, 2, 3])
def test_packed_batches_arrive_in_plan_order(indexed, num_workers):
    index, records = indexed
    batches = plan_batches(index.lengths, 1024, max_length=1022, seed=num_workers)
    loader = create_async_dataloader(
        PackedBatchDataset(index, batches, 1022),
        batch_size=None,
        num_workers=num_workers,
        prefetch_factor=2,
        timeout=120,
    )
    got = list(loader)
    assert [b["indices"].tolist() for b in got] == [b.tolist() for b in batches]
    for batch in got:
        check_batch(batch, index, records, 1022)
    assert any(b["truncated"].any() for b in got)


def test_workers_start_when_the_iterator_is_made_not_at_the_first_batch(indexed):
    """A caller starts them early (beside its model build) or with signals masked."""
    index, _records = indexed
    batches = plan_batches(index.lengths, 1024, max_length=1022)
    loader = create_async_dataloader(
        PackedBatchDataset(index, batches, 1022), batch_size=None, num_workers=2, timeout=120
    )
    before = len(multiprocessing.active_children())
    batches_out = iter(loader)
    assert len(multiprocessing.active_children()) == before + 2
    assert len(list(batches_out)) == len(batches)


def test_ranks_and_workers_see_every_record_once(indexed):
    index, _records = indexed
    batches = plan_batches(index.lengths, 2048)
    seen = []
    for rank in range(2):
        share = split_for_rank(batches, rank, 2, index.lengths)
        loader = create_async_dataloader(
            PackedBatchDataset(index, share), batch_size=None, num_workers=2, prefetch_factor=2
        )
        seen += [i for b in loader for i in b["indices"].tolist()]
    assert sorted(seen) == list(range(len(index)))


def test_sequence_dataset_with_collator_over_ranks_and_workers(write_fasta, random_proteins):
    records = random_proteins(37, 1, 80, seed=5)
    path = write_fasta(records, gz=True)
    seen = []
    for rank in range(2):
        dataset = SequenceDataset([path], max_length=50, rank=rank, world_size=2)
        loader = create_async_dataloader(
            dataset,
            VarlenCollator(max_tokens=10**5, max_length=50),
            batch_size=4,
            num_workers=2,
            prefetch_factor=2,
        )
        for batch in loader:
            check_batch(batch, dataset.index, dict(records), 50)
            seen += batch["indices"].tolist()
    assert sorted(seen) == list(range(len(records)))


def test_sequence_dataset_items(write_fasta):
    path = write_fasta([("a", "mkt*"), ("b", "L" * 40)], name="in.fa")
    items = list(SequenceDataset([path], max_length=30))
    assert items == [
        {"id": "a", "sequence": "MKT", "file": "in.fa", "index": 0, "truncated": False},
        {"id": "b", "sequence": "L" * 30, "file": "in.fa", "index": 1, "truncated": True},
    ]


def test_worker_without_cuda_isolation_is_refused(indexed, monkeypatch):
    index, _ = indexed
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    dataset = PackedBatchDataset(index, plan_batches(index.lengths, 4096))
    plain = DataLoader(dataset, batch_size=None, num_workers=1, multiprocessing_context="spawn")
    with pytest.raises(RuntimeError, match="CUDA access detected"):
        next(iter(plain))
    isolated = DataLoader(
        dataset,
        batch_size=None,
        num_workers=1,
        multiprocessing_context="spawn",
        worker_init_fn=cuda_safe_worker_init,
    )
    assert next(iter(isolated))["num_sequences"] > 0


def test_loader_settings(indexed):
    index, _ = indexed
    loader = create_async_dataloader(PackedBatchDataset(index, []), batch_size=None, num_workers=2)
    assert loader.multiprocessing_context.get_start_method() == "spawn"
    assert loader.worker_init_fn is cuda_safe_worker_init
    assert loader.persistent_workers and loader.prefetch_factor == 4 and loader.timeout == 300.0
    assert loader.pin_memory == torch.cuda.is_available()


@pytest.mark.parametrize("num_workers", [0, -1])
def test_loader_needs_a_worker(indexed, num_workers):
    index, _ = indexed
    with pytest.raises(ValueError, match="requires num_workers >= 1, got"):
        create_async_dataloader(PackedBatchDataset(index, []), num_workers=num_workers)


def test_worker_init_hides_cuda(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    cuda_safe_worker_init(0)
    import os

    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"


def test_collator_refuses_to_drop_sequences():
    items = [{"id": f"s{i}", "sequence": "A" * 50} for i in range(3)]
    with pytest.raises(ValueError, match="3 sequences need 156 tokens, more than max_tokens=100"):
        VarlenCollator(max_tokens=100)(items)
    alone = VarlenCollator(max_tokens=10)([{"id": "big", "sequence": "A" * 50}])
    assert alone["num_sequences"] == 1 and alone["indices"].tolist() == [-1]


def test_collator_truncates_and_records_it():
    batch = VarlenCollator(max_length=3)(
        [{"id": "a", "sequence": "MKTAY"}, {"id": "b", "sequence": "MK"}]
    )
    assert batch["lengths"].tolist() == [3, 2]
    assert batch["truncated"].tolist() == [True, False]
    assert batch["input_ids"].tolist() == [0, 20, 15, 11, 2, 0, 20, 15, 2]
