"""Hostile config files and ``--set`` values: one ``error:`` line, exit code 2, bounded work, whatever the input.

Two halves. The survey (as ``tests/test_bad_inputs.py``): each case runs a command as a user would, ``python
-m ...`` in a fresh interpreter, and must end with exit code 2, exactly one ``error:`` line, the last on
stderr, naming the problem, no traceback, within an output budget (a hang is stopped by a generous subprocess
timeout and fails its case). In process, the loader's work is counted in Python function calls, a measure that
does not depend on the machine's load: no input may cost more than the largest config it accepts. Then a
property-based fuzzer
(hypothesis, derandomized with a fixed example budget so CI is reproducible): generated YAML documents and
overrides (random nesting, keys of mixed types, anchors and aliases, huge numbers, inf and nan, unicode and
invalid bytes, deep nesting, known fields with wrong values) either load or raise one bounded
:class:`ConfigError`, in process; a smaller set runs through ``python -m research.pmg.train``, which must exit
0 or 2 with one ``error:`` line and write nothing outside its output folder.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import resource
import subprocess
import sys
import typing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from research.pmg.config import (MAX_BASE_CHAIN, MAX_CONFIG_BYTES, MAX_DEPTH, MAX_VALUES, ConfigError, PMGConfig,
                                 load_config)
from research.pmg.errors import MAX_MESSAGE_CHARS, error_line, short_repr
from tests.bad_input_helpers import MAX_OUTPUT, assert_one_error_line
from tests.subprocess_env import stage_env
from tests.tiny_models import REPO, TINY_CONFIG

PREPARE, TRAIN, GENERATE, EVALUATE, PIPELINE = (
    "research.pmg.data.prepare", "research.pmg.train", "research.pmg.generate", "research.pmg.evaluate",
    "research.pmg.pipeline")
SECONDS = 60  # subprocess timeouts derive from it, failure bounds only: a config error is found at load
# Work of one in-process load, in Python function calls (deterministic, unlike seconds): a document of MAX_VALUES
# plain values, the largest the loader accepts, makes about 2.4 million; an alias bomb of 9**9 values, refused
# before its aliases are expanded, about 30,000 (expanded, it would make billions).
MAX_LOAD_CALLS = 4_000_000


class OverBudget(BaseException):
    """Raised inside the load once it exceeds MAX_LOAD_CALLS (a BaseException: no handler in the loader swallows
    it), so runaway work fails the test at once instead of running on."""


@contextlib.contextmanager
def bounded_work(limit: int = MAX_LOAD_CALLS):
    """Count the Python function calls made inside the block; past ``limit`` the block is stopped and the test
    fails."""
    calls = 0

    def profile(frame, event, arg):
        nonlocal calls
        if event == "call":
            calls += 1
            if calls > limit:
                raise OverBudget(f"more than {limit} Python calls")

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield
    except OverBudget as exc:
        pytest.fail(f"runaway work: {exc}")
    finally:
        sys.setprofile(previous)


def alias_bomb(width: int = 9, depth: int = 9, leaf: str = "x") -> str:
    """``depth`` nested anchors of ``width`` aliases each, as one flow sequence: width**depth values."""
    names = "abcdefghijklmnopqrstuvwxyz"[:depth]
    items = [f"&{names[0]} [{','.join([leaf] * width)}]"]
    items += [f"&{n} [{','.join([f'*{p}'] * width)}]" for p, n in zip(names, names[1:])]
    return f"[{','.join(items)}]"


def nest(path: str, value: str) -> str:
    """A block YAML document setting the dotted ``path`` to the flow YAML text ``value``."""
    parts = path.split(".")
    lines = [f"{'  ' * i}{part}:" for i, part in enumerate(parts[:-1])]
    return "\n".join([*lines, f"{'  ' * (len(parts) - 1)}{parts[-1]}: {value}"]) + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# Survey: each reproduction of issue 18, run as a user would
# ---------------------------------------------------------------------------------------------------------------------
def _cases(w: Path) -> list[tuple[str, str, list[str], str]]:
    """(case id, module, argv, expected text). ``w`` is the workspace the ``world`` fixture fills."""
    cfg = ["--config", str(TINY_CONFIG), "--set", f"runtime.output_dir={w / 'out'}"]
    absent = ["--set", "evaluate.metrics=[ssim]", "--method", f"x={w / 'absent'}"]
    return [
        # defect 2: a 300-byte alias bomb must not hang or print megabytes
        ("train-alias-bomb-file", TRAIN, ["--config", str(w / "bomb_lr.yaml")],
         "bomb_lr.yaml: train.lr: more than 20000 values once YAML aliases are expanded"),
        ("pipeline-alias-bomb-file", PIPELINE, ["--config", str(w / "bomb_unet.yaml")],
         "bomb_unet.yaml: models.diffusion.unet.x: more than 20000 values"),
        ("generate-alias-bomb-set", GENERATE, [*cfg, "--set", f"models.diffusion.unet.x={alias_bomb()}"],
         "models.diffusion.unet.x: more than 20000 values"),
        ("train-self-alias", TRAIN, [*cfg, "--set", "models.diffusion.unet.x=&a [*a]"], "contains itself"),
        ("train-long-value", TRAIN, [*cfg, "--set", "train.lr=" + "x" * 100_000], "field 'train.lr' must be a number"),
        # defect 4: loader crashes
        ("train-mixed-keys-file", TRAIN, ["--config", str(w / "mixed.yaml")],
         "mixed.yaml: top level: key 1 is not text"),
        ("train-latin1-byte", TRAIN, ["--config", str(w / "latin1.yaml")], "latin1.yaml: line 2: not UTF-8 text"),
        ("train-deep-list", TRAIN, ["--config", str(w / "deep.yaml")], "deep.yaml: line 1: nested more than 64 levels"),
        ("train-mixed-keys-set", TRAIN, [*cfg, "--set", "train={1: 2, a: 3}"], "train: key 1 is not text"),
        ("train-deep-set", TRAIN, [*cfg, "--set", "train.lr=" + "[" * 5000 + "]" * 5000], "nested more than 64"),
        ("train-date-value", TRAIN, [*cfg, "--set", "models.diffusion.unet.x=2024-01-01"], "is not plain data"),
        ("train-huge-hex", TRAIN, [*cfg, "--set", "runtime.seed=0x" + "f" * 5000], "out of range"),
        # defect 3: runtime fields checked at load (or, for the device, at setup) with the file named
        ("train-seed-negative", TRAIN, [*cfg, "--set", "runtime.seed=-1"],
         "tiny.yaml: runtime.seed: must be in [0, 2**32)"),
        ("train-seed-huge", TRAIN, [*cfg, "--set", f"runtime.seed={10 ** 29}"], "runtime.seed"),
        ("train-seed-2-32", TRAIN, [*cfg, "--set", f"runtime.seed={2 ** 32}"], "runtime.seed: must be in [0, 2**32)"),
        ("train-fp16-on-cpu", TRAIN, [*cfg, "--set", "runtime.device=CPU", "--set", "runtime.precision=fp16"],
         "tiny.yaml: runtime.precision: fp16 is not supported on CPU"),
        ("train-device-id-huge", TRAIN, [*cfg, "--set", "runtime.device_id=99999999999"],
         "runtime.device_id: must be in [0, 4096)"),
        ("train-ascend-on-cpu", TRAIN, [*cfg, "--set", "runtime.device=Ascend"],
         "runtime.device=Ascend: no Ascend device"),
        # defect 11: inf and nan anywhere a float is read
        ("train-lr-inf", TRAIN, [*cfg, "--set", "train.lr=.inf"], "field 'train.lr' must be a finite number"),
        ("train-lr-nan", TRAIN, [*cfg, "--set", "train.lr=.nan"], "field 'train.lr' must be a finite number"),
        ("train-lr-overflow", TRAIN, [*cfg, "--set", "train.lr=1e400"], "field 'train.lr' must be a finite number"),
        ("generate-guidance-inf-text", GENERATE, [*cfg, "--set", "generate.guidance=inf"],
         "field 'generate.guidance' must be a finite number"),
        # defect 10: sizes and counts that would exhaust memory
        ("evaluate-bootstrap-huge", EVALUATE, [*cfg, *absent, "--set", f"evaluate.bootstrap_samples={10 ** 20}"],
         "field 'evaluate.bootstrap_samples' = 100000000000000000000 is out of range"),
        ("evaluate-bootstrap-set", EVALUATE, [*cfg, *absent, "--set", "evaluate.bootstrap_samples=100000000"],
         "bootstrap_samples: must be in [100, 1000000]"),
        ("evaluate-image-size-set", EVALUATE, [*cfg, *absent, "--set", "evaluate.image_size=1000000"],
         "image_size: must be <= 8192"),
        ("generate-size-set", GENERATE, [*cfg, "--set", "generate.size=1000000"],
         "generate.size: must be in [0, 8192]"),
        # defect 12: prepare's YAML errors on one line
        ("prepare-bad-yaml-set", PREPARE, ["--scenario", "stickers", "--set", "train=["], "not valid YAML: line 1"),
        ("prepare-bad-yaml-file", PREPARE, ["--config", str(w / "broken.yaml")], "broken.yaml: not valid YAML: line 3"),
        # defect 13: prepare's OSErrors are user errors like every stage's
        ("prepare-out-under-file", PREPARE, ["--scenario", "stickers", "--out", str(w / "notes.txt" / "data")],
         "notes.txt: File exists"),
        ("prepare-file-size-limit", PREPARE, ["--scenario", "stickers", "--out", str(w / "limited")],
         "File too large"),
    ]


LIMITED = {"prepare-file-size-limit": 2 * 1024}  # RLIMIT_FSIZE bytes, as `ulimit -f 2`
CASE_IDS = [case[0] for case in _cases(Path("/w"))]
assert len(set(CASE_IDS)) == len(CASE_IDS), "case ids must be unique"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("bad-configs")
    (w / "bomb_lr.yaml").write_text(nest("train.lr", alias_bomb()))
    (w / "bomb_unet.yaml").write_text(nest("models.diffusion.unet.x", alias_bomb()))
    (w / "mixed.yaml").write_text("1: x\nfoo: y\n")
    (w / "latin1.yaml").write_bytes(b"train:\n  lr: caf\xe9\n")
    (w / "deep.yaml").write_text("train: " + "[" * 5000 + "]" * 5000 + "\n")
    (w / "broken.yaml").write_text("train:\n  lr: [\n")
    (w / "notes.txt").write_text("just some notes\n")
    assert len((w / "bomb_lr.yaml").read_bytes()) < 400
    return w


@pytest.fixture(scope="module")
def results(world) -> dict[str, subprocess.CompletedProcess]:
    env = stage_env()

    def one(case):
        name, module, argv, _ = case
        limit = LIMITED.get(name)
        preexec = (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))) if limit else None
        command = [sys.executable, "-m", module, *argv]
        try:
            proc = subprocess.run(command, cwd=world, env=env, capture_output=True, text=True, errors="replace",
                                  timeout=2 * SECONDS, preexec_fn=preexec)
        except subprocess.TimeoutExpired as exc:  # a hang fails its own case (exit -9), not the whole survey
            proc = subprocess.CompletedProcess(command, -9, str(exc.stdout or "")[-3000:],
                                               f"{str(exc.stderr or '')[-3000:]}\nkilled after {2 * SECONDS} s")
        return name, proc

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, _cases(world)))


@pytest.mark.parametrize("name", CASE_IDS)
def test_hostile_config_is_one_error_line_with_exit_2(name, results, world):
    if name == "train-ascend-on-cpu":
        from research.pmg.runtime import detect_device

        if detect_device() == "Ascend":
            pytest.skip("this machine has an Ascend device")
    expected = next(case[3] for case in _cases(world) if case[0] == name)
    line = assert_one_error_line(results[name])
    assert expected in line, line
    assert "^" not in line  # no PyYAML snippet with its caret


# ---------------------------------------------------------------------------------------------------------------------
# The loader's limits, in process
# ---------------------------------------------------------------------------------------------------------------------
def write(tmp_path: Path, text: str | bytes, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


@pytest.mark.parametrize("text, message", [
    (nest("train.lr", alias_bomb(3, 10)), f"train.lr: more than {MAX_VALUES} values once YAML aliases"),
    (nest("train.lr", "&a [*a]"), "train.lr: contains itself"),
    (nest("models.diffusion.unet", "&a {x: *a}"), "models.diffusion.unet.x: contains itself"),
    ("models:\n  diffusion:\n    unet:\n      1: 2\n", "models.diffusion.unet: key 1 is not text"),
    ("runtime:\n  on: 1\n", "runtime: key True is not text"),
    ("train: " + "{a: " * 100 + "1" + "}" * 100 + "\n", f"nested more than {MAX_DEPTH} levels"),
    ("models:\n  diffusion:\n    unet:\n      x: [" + ",".join(["1"] * (MAX_VALUES + 1)) + "]\n",
     f"more than {MAX_VALUES} values"),
    ("#" + "x" * MAX_CONFIG_BYTES + "\n", "larger than 1 MiB"),
    (nest("runtime.seed", "1" * 5000), "not valid YAML"),  # past Python's 4300-digit int parsing limit
    (nest("runtime.output_dir", "2024-02-30"), "not valid YAML"),
    (nest("runtime.output_dir", "!!binary aGVsbG8="), "of type bytes is not plain data"),
    (nest("models.diffusion.unet", "!!set {a, b}"), "of type set is not plain data"),
    (nest("runtime.output_dir", "!!python/object:os.system {}"), "not valid YAML"),
    ("runtime:\n  output_dir: a\x00b\n", "not valid YAML"),
    (b"train:\n  lr: \xff\xfe\n", "line 2: not UTF-8 text (byte 0xff)"),
    (nest("train.lr", "1e400"), "field 'train.lr' must be a finite number"),
    (nest("train.target_weight", "-.inf"), "field 'train.target_weight' must be a finite number"),
    (nest("generate.weight_sets", "[[1, .nan]]"), "must be a finite number"),
    (nest("train.max_steps", str(2 ** 64)), "out of range (64-bit integers)"),
    (nest("runtime.num_threads", "100000"), "runtime.num_threads: must be in [0, 4096]"),
    (nest("models.llm.hidden_size", str(2 ** 20)), "models.llm.hidden_size: must be <= 65536"),
    (nest("keywords.batch_size", "100000"), "keywords.batch_size: must be <= 4096"),
    (nest("generate.steps", "1000000"), "generate.steps: must be <= 10000"),
    (nest("evaluate.permutations", str(10 ** 9)), "evaluate.permutations: must be in [100, 1000000]"),
    (nest("evaluate.seed", "-1"), "evaluate.seed: must be in [0, 2**32)"),
    (nest("data.seed", str(2 ** 32)), "data.seed: must be in [0, 2**32)"),
    (nest("data.history_len", "1000000"), "data.history_len: must be <= 1000"),
    ("runtime:\n  device: CPU\n  flash_attention: 'on'\n", "runtime.flash_attention: CPU has no flash-attention"),
])
def test_loader_limits_are_config_errors(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err, bounded_work():
        load_config(path)
    assert message in str(err.value) and str(path) in str(err.value), str(err.value)
    assert "\n" not in str(err.value) and len(str(err.value)) <= MAX_MESSAGE_CHARS


@pytest.mark.parametrize("override, message", [
    (f"train.lr={alias_bomb()}", "train.lr: more than 20000 values once YAML aliases are expanded"),
    ("train.lr=" + "[" * 5000, "nested more than 64"),
    ("x" * MAX_CONFIG_BYTES + "=1", "unknown field"),
    ("train.lr=" + "1" * (MAX_CONFIG_BYTES + 1), "longer than 1 MiB"),
    (".".join(["a"] * (MAX_DEPTH + 1)) + "=1", "field name nested more than 64 levels"),
    ("train={1: 2, a: 3}", "train: key 1 is not text"),
    ("train.lr=.nan", "must be a finite number"),
])
def test_overrides_have_the_same_limits(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(TINY_CONFIG, [override])
    assert message in str(err.value), str(err.value)
    assert "\n" not in str(err.value) and len(str(err.value)) <= MAX_MESSAGE_CHARS


def test_a_long_base_chain_is_refused(tmp_path):
    for i in range(MAX_BASE_CHAIN + 2):
        write(tmp_path, f"base: c{i + 1}.yaml\n" if i <= MAX_BASE_CHAIN else "train:\n  lr: 0.5\n", f"c{i}.yaml")
    with pytest.raises(ConfigError, match=f"'base' chain longer than {MAX_BASE_CHAIN} files"):
        load_config(tmp_path / "c0.yaml")
    assert load_config(tmp_path / f"c{MAX_BASE_CHAIN - 2}.yaml").train.lr == 0.5


def test_the_mini_trainers_configs_share_the_limits(tmp_path):
    from research.pmg.mini.config import MiniClipConfig, MiniSDConfig, load_mini_config
    from research.pmg.mini.llm_config import load_mini_llm_config

    configs = REPO / "configs" / "mini"
    for cls, name in ((MiniClipConfig, "clip"), (MiniSDConfig, "sd")):
        load_mini_config(cls, configs / f"{name}.yaml")
        with pytest.raises(ConfigError, match="more than 20000 values"):
            load_mini_config(cls, configs / f"{name}.yaml", [f"runtime.output_dir={alias_bomb()}"])
        with pytest.raises(ConfigError, match="runtime.seed: must be in"):
            load_mini_config(cls, configs / f"{name}.yaml", ["runtime.seed=-1"])
    load_mini_llm_config(configs / "llm.yaml")
    with pytest.raises(ConfigError, match="train.mix.target' must be a finite number"):
        load_mini_llm_config(configs / "llm.yaml", ["train.mix.target=.inf"])
    with pytest.raises(ConfigError, match="world.users: must be <= 1000000"):
        load_mini_llm_config(configs / "llm.yaml", [f"world.users={10 ** 9}"])


def test_every_shipped_config_still_loads():
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        if "prompts" in path.parts or path.parent.name == "mini" and path.stem in ("clip", "sd", "llm"):
            continue  # prompt sets; the mini trainers' configs (test above)
        load_config(path)


def test_values_in_messages_are_bounded():
    shared = [list(range(10))] * 10
    for _ in range(8):
        shared = [shared] * 10  # 10**10 values if expanded
    assert len(short_repr(shared)) <= 80
    assert short_repr(int("9" * 4000) ** 2) .startswith("<integer of")
    assert len(short_repr("x" * 10 ** 6)) <= 80 and short_repr("a\nb") == "'a\\nb'"
    line = error_line("one\ntwo  " + "x" * 10 ** 6)
    assert line.startswith("error: one two x") and "\n" not in line and len(line) <= len("error: ") + MAX_MESSAGE_CHARS
    assert error_line(OSError(27, "File too large while writing", "/o/items.jsonl")) == \
        "error: /o/items.jsonl: File too large while writing"


# ---------------------------------------------------------------------------------------------------------------------
# Fuzzer
# ---------------------------------------------------------------------------------------------------------------------
def _field_paths(cls: type = PMGConfig, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        hint = hints[f.name]
        out += _field_paths(hint, f"{prefix}{f.name}.") if dataclasses.is_dataclass(hint) else [prefix + f.name]
    return out


FIELDS = _field_paths()
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=24)
HOSTILE_SCALARS = ["1" * 5000, "0x" + "f" * 3000, "1e400", "-.inf", ".nan", ".inf", str(10 ** 30), "-1", "0",
                   str(2 ** 32), str(2 ** 63), "~", "yes", "on", "2024-02-30", "2024-01-01", "!!binary aGk=",
                   "!!set {a}", "&a [*a]", "{1: 2, a: 3}", "[[[[]]]]", "''", "'\u00e9\u4e2d\U0001f600'", "[", "}",
                   "!!python/name:os.system", "*undefined", "@", "%YAML 1.1", "- a"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-(10 ** 30), 10 ** 30),
                    st.floats(allow_nan=True, allow_infinity=True), TEXT,
                    st.sampled_from(["auto", "CPU", "Ascend", "fp16", "bf16", "graph", "test", "lpips", "scaling"]))
keys = st.one_of(TEXT, st.integers(), st.booleans(), st.none(), st.sampled_from([p.split(".")[-1] for p in FIELDS]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(keys, inner, max_size=4)), max_leaves=12)
field = st.one_of(st.sampled_from(FIELDS), st.sampled_from(FIELDS).map(lambda p: p.rsplit(".", 1)[0]))


def _flow(value) -> str:
    """``value`` as one line of flow YAML (dumped inside a list, whose brackets are then dropped)."""
    return yaml.safe_dump([value], default_flow_style=True, width=10 ** 9, allow_unicode=True).strip()[1:-1]


def _plain_document(pairs: list[tuple[str, object]]) -> str:
    root: dict = {}
    for path, value in pairs:
        node = root
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
        node[last] = value
    return yaml.safe_dump(root, sort_keys=False, allow_unicode=True)

value_text = st.one_of(
    values.map(_flow),
    st.sampled_from(HOSTILE_SCALARS),
    st.builds(alias_bomb, st.integers(1, 10), st.integers(1, 10)),
    st.integers(1, 3000).flatmap(lambda d: st.sampled_from(["[" * d + "]" * d, "{a: " * d + "1" + "}" * d,
                                                            "[" * d])),
    TEXT,
)
documents = st.one_of(
    st.lists(st.tuples(field, values), max_size=5).map(_plain_document),
    st.lists(st.tuples(field, value_text), min_size=1, max_size=3).map(
        lambda items: "".join(nest(path, text) for path, text in items)),
    st.builds(lambda text, extra: text + extra, st.sampled_from(["", "train:\n  lr: 1.0e-4\n"]),
              st.dictionaries(keys, values, max_size=3).map(lambda d: yaml.safe_dump(d, sort_keys=False))),
    TEXT,
)


@st.composite
def config_bytes(draw) -> bytes:
    """A YAML document, sometimes with a few raw bytes (often not UTF-8) spliced in."""
    data = draw(documents).encode("utf-8")
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at:]
    return data


overrides = st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", field, value_text),
                               st.builds(lambda k, v: f"{k}={v}", TEXT, TEXT), TEXT), max_size=3)


def assert_loads_or_one_bounded_error(path: Path, items: list[str]) -> None:
    try:
        with bounded_work():
            cfg = load_config(path, items)
    except ConfigError as exc:
        message = str(exc)
        assert message and "\n" not in message and len(message) <= MAX_MESSAGE_CHARS, message[:2000]
    else:
        assert isinstance(cfg, PMGConfig)
        assert len(json.dumps(cfg.to_dict(), sort_keys=True)) < 10 * MAX_CONFIG_BYTES  # as a stage key: plain, bounded


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=200, deadline=None, derandomize=True, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(data=config_bytes(), items=overrides)
def test_fuzzed_configs_load_or_fail_with_one_bounded_line(fuzz_dir, data, items):
    path = fuzz_dir / "fuzzed.yaml"
    path.write_bytes(data)
    assert_loads_or_one_bounded_error(path, items)


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(items=st.lists(st.builds(lambda k, v: f"{k}={v}", field, value_text), min_size=1, max_size=3))
def test_fuzzed_overrides_of_a_good_config_load_or_fail_with_one_bounded_line(items):
    assert_loads_or_one_bounded_error(TINY_CONFIG, items)


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size if p.is_file() else -1)
            for p in root.rglob("*")}


@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(data=config_bytes(), items=overrides.map(lambda xs: [x for x in xs if not x.startswith("-")]))
def test_fuzzed_configs_on_the_command_line(fuzz_dir, data, items):
    """Exit 0 or one ``error:`` line with exit 2, bounded output, nothing written outside the output folder."""
    work, out, marker = fuzz_dir / "cwd", fuzz_dir / "out", fuzz_dir / "marker"
    for folder in (work, marker):
        folder.mkdir(exist_ok=True)
    (marker / "keep").write_text("the user's own file\n")
    (work / "fuzzed.yaml").write_bytes(data)
    before = (_tree(work), _tree(marker))
    argv = ["--config", "fuzzed.yaml", *[a for item in items for a in ("--set", item)],
            "--set", f"runtime.output_dir={out}", "--set", "runtime.log_dir=", "--set", "runtime.cache_dir=",
            "--set", f"data.out={out / 'data'}"]
    env = stage_env()
    proc = subprocess.run([sys.executable, "-m", TRAIN, *argv], cwd=work, env=env, capture_output=True, text=True,
                          errors="replace", timeout=10 * SECONDS)  # a failure bound only
    if proc.returncode != 0:
        assert_one_error_line(proc)
    assert (_tree(work), _tree(marker)) == before
