"""Specification of the batch plan every backend follows (duet.data.contract.batch_plan)."""

from __future__ import annotations

import pytest

from duet.data.contract import batch_plan, plan_sizes, rank_slice


@pytest.mark.parametrize(
    "n, batch, sizes",
    [
        (171, 64, [64, 64, 43]),  # the case: 43 images used to be dropped every epoch
        (129, 64, [64, 33, 32]),  # one left over: pooled with the batch before, split evenly
        (150, 64, [64, 43, 43]),
        (3, 2, [3]),  # batch 2: one batch of 3, never 2 + 1
        (128, 64, [64, 64]),
        (5, 64, [5]),
        (1, 64, [1]),
    ],
)
def test_every_image_is_in_every_epoch(n: int, batch: int, sizes: list[int]) -> None:
    assert plan_sizes(n, batch_size=batch, drop_last=False) == sizes
    for epoch in (1, 2):
        plan = batch_plan(n, batch_size=batch, shuffle=True, seed=4, epoch=epoch, drop_last=False)
        assert [len(b) for b in plan] == sizes
        assert sorted(i for b in plan for i in b) == list(range(n))


def test_no_batch_is_below_half_a_batch_or_above_a_batch() -> None:
    for batch in (2, 3, 8, 64):
        for n in range(batch, 5 * batch):
            sizes = plan_sizes(n, batch_size=batch, drop_last=False)
            assert sum(sizes) == n and max(sizes) <= max(batch, 3) and min(sizes) >= max(2, batch // 2), (n, batch)


def test_drop_last_keeps_only_full_batches() -> None:
    assert plan_sizes(171, batch_size=64, drop_last=True) == [64, 64]


@pytest.mark.parametrize("n, world", [(171, 2), (130, 4), (131, 4), (133, 4), (100, 8), (42, 2)])
def test_ranks_split_every_global_batch_and_none_gets_a_batch_of_one(n: int, world: int) -> None:
    """Concatenating the ranks' slices gives the single-process plan, and every
    rank gets at least 2 images of every batch (BatchNorm trains on each)."""
    batch = 64
    one = batch_plan(n, batch_size=batch, shuffle=True, seed=1, epoch=3, drop_last=False)
    ranks = [
        batch_plan(n, batch_size=batch, shuffle=True, seed=1, epoch=3, drop_last=False, rank=r, world=world)
        for r in range(world)
    ]
    for b, whole in enumerate(one):
        assert [i for r in range(world) for i in ranks[r][b]] == whole
        assert min(len(ranks[r][b]) for r in range(world)) >= 2
        assert max(len(ranks[r][b]) for r in range(world)) - min(len(ranks[r][b]) for r in range(world)) <= 1


def test_rank_slices_of_a_full_batch_are_equal_and_contiguous() -> None:
    assert [rank_slice(64, r, 4) for r in range(4)] == [(0, 16), (16, 32), (32, 48), (48, 64)]
    assert [rank_slice(10, r, 4) for r in range(4)] == [(0, 3), (3, 6), (6, 8), (8, 10)]
