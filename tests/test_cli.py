"""Entry points turn user errors into one line and exit code 2; bugs keep their traceback."""
import argparse

import pytest

from research.pmg.cli import USER_ERROR_EXIT, add_config_args, config_from_args, run
from tests.tiny_models import TINY_CONFIG


def _main(argv):
    parser = argparse.ArgumentParser()
    add_config_args(parser)
    cfg = config_from_args(parser.parse_args(argv))
    print(cfg.train.lr)


def test_config_and_overrides_reach_the_stage(capsys):
    assert run(_main, ["--config", str(TINY_CONFIG), "--set", "train.lr=2e-5"]) == 0
    assert capsys.readouterr().out.strip() == "2e-05"


def test_user_error_is_one_line_with_exit_2(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 1.0\n  bach_size: 3\n")
    assert run(_main, ["--config", str(bad)]) == USER_ERROR_EXIT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "train.bach_size" in err and str(bad) in err
    assert run(_main, ["--config", str(tmp_path / "absent.yaml")]) == USER_ERROR_EXIT
    assert "absent.yaml: config file not found" in capsys.readouterr().err


def test_bugs_are_not_swallowed():
    def broken(argv):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run(broken, [])
