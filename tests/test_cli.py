"""Entry points turn user errors into one line and exit code 2; bugs keep their traceback."""
import argparse

import pytest

from research.pmg.cli import USER_ERROR_EXIT, add_config_args, config_from_args, run
from tests.subprocess_env import stage_env
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


def test_the_launchers_put_msrun_logs_in_the_config_s_log_folder(tmp_path):
    """scripts/lib.sh ``pmg_log_dir``: msrun's worker logs go where the runtime logs (research/pmg/layout.py), for
    the config and --set items the launcher passes on; LOG_DIR wins; a bad config is one error line, exit 2."""
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = stage_env()
    env.pop("LOG_DIR", None)

    def log_dir(*args: str, **extra: str) -> subprocess.CompletedProcess:
        script = f'root={repo}; source "$root/scripts/lib.sh"; pmg_log_dir "$@"'
        return subprocess.run(["bash", "-c", script, "bash", *args], cwd=repo, env={**env, **extra},
                              capture_output=True, text=True, timeout=120)

    out = log_dir("train", "--config", str(TINY_CONFIG), "--set", f"runtime.output_dir={tmp_path}")
    assert out.stdout.strip() == str(tmp_path / "log" / "msrun_train"), out.stderr
    out = log_dir("keywords", f"--config={TINY_CONFIG}", "--set", f"runtime.log_dir={tmp_path / 'logs'}", "--data", "d")
    assert out.stdout.strip() == str(tmp_path / "logs" / "msrun_keywords"), out.stderr
    assert log_dir("train", "--config", str(TINY_CONFIG), LOG_DIR="/x").stdout.strip() == "/x"
    bad = log_dir("train", "--config", str(TINY_CONFIG), "--set", "train.lr=-1")
    assert bad.returncode == USER_ERROR_EXIT and bad.stderr.strip().splitlines() == [
        f"error: {TINY_CONFIG}: train.lr: must be > 0"]
