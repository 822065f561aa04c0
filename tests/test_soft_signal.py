"""benchmarks/soft_signal.py: the pairing and the statistics behind its table, on arrays small enough to check by hand.

Its verdict on the soft preference rests on two things: every sample's "shuffled" soft embedding belongs to
another user, and each context's difference to T is the mean of per-sample differences over the same draws
(with its interval and, per timestep quarter, only the draws that fell there).
"""
import subprocess
import sys

import numpy as np
import pytest

from benchmarks.soft_signal import majority_theme, other_user, paired, summarise
from research.pmg.errors import PMGError
from research.pmg.records.samples import Item
from tests.bad_input_helpers import assert_one_error_line
from tests.subprocess_env import stage_env
from tests.tiny_models import REPO


def test_each_sample_gets_the_soft_embedding_of_another_user():
    users = np.array(["a", "a", "a", "b", "c", "c", "d", "a"])
    partner = other_user(users)
    assert all(users[partner[i]] != users[i] for i in range(len(users)))
    assert len(set(partner.tolist())) > 2  # not everybody gets the same stranger
    with pytest.raises(PMGError, match="one user"):
        other_user(np.array(["a", "a"]))


def test_majority_theme_breaks_ties_by_name():
    items = {i: Item(id=i, title=f"sticker {i}", category=c) for i, c in (("1", "food"), ("2", "cats"), ("3", "food"),
                                                                       ("4", "cats"))}
    assert majority_theme(["1", "2", "3"], items) == "food"
    assert majority_theme(["1", "2", "3", "4"], items) == "cats"


def test_paired_mean_and_interval():
    diff = np.array([1.0, 2.0, 3.0, 6.0])
    half = 1.96 * np.std(diff, ddof=1) / 2.0  # sqrt(n) = 2
    assert paired(diff) == pytest.approx({"mean": 3.0, "low": 3.0 - half, "high": 3.0 + half})


def test_differences_are_per_sample_means_over_the_same_draws_and_per_timestep_quarter():
    # 2 draws x 3 samples; "X" is T plus a shift that depends on the draw's timestep
    timesteps = np.array([[100, 600, 900], [300, 100, 950]])
    base = np.array([[0.5, 0.4, 0.3], [0.2, 0.6, 0.1]])
    shift = np.where(timesteps < 250, -0.1, np.where(timesteps < 500, -0.2, np.where(timesteps < 750, -0.3, -0.4)))
    errors = {name: base.copy() for name in ("T", "T+S shuffled", "T+P+S", "T+P+S shuffled")}
    errors["T+S"] = base + shift
    rows = summarise(errors, timesteps, {})["contexts"]
    # per sample: (-0.1 - 0.2) / 2, (-0.3 - 0.1) / 2, (-0.4 - 0.4) / 2
    assert rows["T+S"]["vs_T"]["mean"] == pytest.approx(np.mean([-0.15, -0.2, -0.4]))
    assert rows["T+S"]["loss"] == pytest.approx((base + shift).mean())
    assert rows["T+S"]["vs_shuffled"]["mean"] == pytest.approx(np.mean([-0.15, -0.2, -0.4]))
    # quarter 0-250: samples 0 (draw 0) and 1 (draw 1) only, each -0.1; sample 2 never fell there
    assert rows["T+S"]["t0-250"]["mean"] == pytest.approx(-0.1)
    assert rows["T+S"]["t750-1000"]["mean"] == pytest.approx(-0.4)
    assert rows["T+S"]["t500-750"]["mean"] == pytest.approx(-0.3)
    assert rows["T+P+S"]["vs_shuffled"]["mean"] == 0.0


@pytest.mark.parametrize("args, named", [(["--config", "no/such.yaml"], "no/such.yaml"),
                                         (["--set", "train.lrr=1"], "train.lrr"),
                                         (["--draws", "0"], "--draws")])
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, args, named):
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "soft_signal.py"), *args, "--json", str(out)],
                          env=stage_env(), capture_output=True, text=True, timeout=300)
    assert named in assert_one_error_line(proc)
    assert not out.exists()
