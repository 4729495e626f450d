"""The epoch plan: equal batches per rank for any layout, no sample read twice unless logged as padding."""
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from ae_train.data.plan import make_plan


def _check(counts, world, workers, bs, epoch):
    plan = make_plan(counts, world, workers, bs, seed=7, epoch=epoch, shuffle=True)
    seen = Counter()
    for rank_workers in plan.workers:
        assert len(rank_workers) == max(1, workers)
        assert sum(w.batches for w in rank_workers) == plan.batches_per_rank >= 1
        for w in rank_workers:
            assert w.samples == w.batches * bs
            for p in w.pieces:
                assert 0 <= p.start < p.stop <= counts[p.shard]
                seen.update((p.shard, i) for i in range(p.start, p.stop))
    total, read = sum(counts), world * plan.batches_per_rank * bs
    assert read == total - plan.dropped + plan.padded
    repeats = sum(n - 1 for n in seen.values())
    assert repeats == plan.padded  # a sample read twice only as logged padding
    assert plan.dropped < world * bs or plan.padded == 0
    return plan


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 400), min_size=1, max_size=40).filter(lambda c: sum(c) > 0),
       st.integers(1, 8), st.integers(0, 6), st.integers(1, 64), st.integers(0, 5))
def test_plan_equal_batches_for_random_layouts(counts, world, workers, bs, epoch):
    _check(counts, world, workers, bs, epoch)


def test_plan_issue_layouts():
    plan = _check([200, 13, 1, 77, 300], 2, 2, 8, 0)
    assert (plan.batches_per_rank, plan.dropped, plan.padded) == (36, 15, 0)
    one = _check([5], 2, 2, 8, 0)
    assert (one.batches_per_rank, one.padded) == (1, 11)


def test_plan_reshuffles_per_epoch_and_repeats_per_seed():
    counts = [50] * 20
    a, b = make_plan(counts, 2, 2, 8, 0, 0, True), make_plan(counts, 2, 2, 8, 0, 1, True)
    assert a.workers[0][0].pieces != b.workers[0][0].pieces
    assert make_plan(counts, 2, 2, 8, 0, 1, True).workers == b.workers
