"""benchmarks/prompt_lengths.py: the bucket and micro-batch arithmetic against hand computations.

The figures it prints (padded tokens per sample with length buckets, the share of batches at each bucket) feed
the configs' ``length_buckets`` and the bucketed FLOPs of benchmarks/flops.py, so the counting is checked on
lists small enough to enumerate by hand.
"""
import itertools

import pytest

from benchmarks.prompt_lengths import (batch_tokens, bucket_ladder, bucket_of, bucket_shares, expected_tokens,
                                       percentiles, simulated_tokens)

LADDER = [64, 128, 256, 512]


def test_ladder_keeps_buckets_below_seq_length_and_ends_with_it():
    assert bucket_ladder([256, 64, 2048, 128, 512, 64], 512) == LADDER
    assert bucket_ladder([], 1024) == [1024]


@pytest.mark.parametrize("length, bucket", [(1, 64), (64, 64), (65, 128), (128, 128), (129, 256), (512, 512),
                                            (900, 512)])
def test_a_sequence_runs_at_the_smallest_bucket_that_holds_it(length, bucket):
    assert bucket_of(length, LADDER) == bucket


def test_a_batch_runs_at_the_bucket_of_its_longest_sequence():
    # [10, 70] -> 128 for 2 samples; [130, 20, 5] -> 256 for 3: (2 * 128 + 3 * 256) / 5
    assert batch_tokens([[10, 70], [130, 20, 5]], LADDER) == pytest.approx(204.8)
    assert batch_tokens([[10], [70], [130]], LADDER) == pytest.approx((64 + 128 + 256) / 3)


def test_expected_tokens_over_random_batches_by_hand():
    lengths, ladder = [10, 70, 130], [64, 128, 256]
    # pairs: (10, 70) -> 128, (10, 130) -> 256, (70, 130) -> 256
    assert bucket_shares(lengths, 2, ladder) == pytest.approx({64: 0, 128: 1 / 3, 256: 2 / 3})
    assert expected_tokens(lengths, 2, ladder) == pytest.approx((128 + 256 + 256) / 3)
    assert expected_tokens(lengths, 1, ladder) == pytest.approx((64 + 128 + 256) / 3)
    assert expected_tokens(lengths, 3, ladder) == 256  # one batch of all


def test_expected_tokens_equal_the_mean_over_every_batch():
    lengths = [3, 40, 64, 65, 90, 127, 128, 129, 200, 300, 511, 700]
    for batch in (1, 2, 3, 4):
        every = [list(c) for c in itertools.combinations(lengths, batch)]
        assert expected_tokens(lengths, batch, LADDER) == pytest.approx(batch_tokens(every, LADDER))
        assert sum(bucket_shares(lengths, batch, LADDER).values()) == pytest.approx(1)
        # seeded shuffled epochs converge to the same expectation
        assert simulated_tokens(lengths, batch, LADDER, epochs=400) == pytest.approx(
            expected_tokens(lengths, batch, LADDER), rel=0.02)


def test_the_simulation_drops_the_incomplete_last_batch_as_training_does():
    # 5 samples, batches of 4: one batch per epoch, which holds the long one 4 times in 5 -> 0.8 * 512 + 0.2 * 64
    # (counting the left-over sample too would give (0.8 * (4 * 512 + 64) + 0.2 * (4 * 64 + 512)) / 5 = 368.6)
    assert simulated_tokens([10, 10, 10, 10, 300], 4, LADDER, epochs=2000) == pytest.approx(422.4, rel=0.03)


def test_percentiles_are_nearest_rank():
    assert percentiles(list(range(1, 101))) == {"min": 1, "p50": 50, "p90": 90, "p99": 99, "max": 100}
    assert percentiles([10, 20, 30, 40]) == {"min": 10, "p50": 20, "p90": 40, "p99": 40, "max": 40}
