"""YAML configs load into validated dataclasses; every mistake is named with its file and field."""
from pathlib import Path

import pytest

from research.pmg.config import ConfigError, PMGConfig, dump_config, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["tiny", "pog", "movielens", "stickers"])
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert isinstance(cfg, PMGConfig)
    assert cfg.source == str(CONFIGS / f"{name}.yaml")


def test_scenario_configs_use_the_real_models():
    cfg = load_config(CONFIGS / "pog.yaml")
    assert cfg.scenario == "pog"
    llm = cfg.models.llm
    assert (llm.hidden_size, llm.num_layers, llm.num_heads, llm.intermediate_size, llm.vocab_size) == \
        (4096, 32, 32, 11008, 32000)
    assert cfg.models.diffusion.path.endswith("stable-diffusion-v1-5")
    assert cfg.models.clip.path.endswith("clip-vit-large-patch14")
    assert cfg.models.soft_preference.prefix_len == 4 and cfg.models.soft_preference.num_mm_tokens == 4
    assert cfg.runtime.output_dir == "output/pog"
    assert load_config(CONFIGS / "movielens.yaml").scenario == "movielens"


def test_misspelled_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "train:\n  lr: 1.0e-4\n  bach_size: 8\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message and "'train.bach_size'" in message and "batch_size" in message


def test_misspelled_section_and_nested_key(tmp_path):
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown field 'trian'"):
        load_config(write(tmp_path, "trian:\n  lr: 1\n"))
    with pytest.raises(ConfigError, match=r"unknown field 'models\.soft_preference\.prefix_length'"):
        load_config(write(tmp_path, "models:\n  soft_preference:\n    prefix_length: 4\n"))


@pytest.mark.parametrize("text, pattern", [
    ("train:\n  lr: fast\n", r"field 'train\.lr' must be a number, got 'fast'"),
    ("train:\n  batch_size: 2.5\n", r"field 'train\.batch_size' must be an integer"),
    ("train:\n  batch_size: 0\n", r"train\.batch_size: must be > 0"),
    ("runtime:\n  mode: eager\n", r"field 'runtime\.mode' = 'eager'; choose one of \['graph', 'pynative'\]"),
    ("scenario: books\n", r"field 'scenario' = 'books'"),
    ("models:\n  soft_preference:\n    prefix_projection: 1\n", r"must be true or false"),
    ("models:\n  llm:\n    hidden_size: 100\n", r"models\.llm\.hidden_size: must be divisible by num_heads"),
    ("models: [1, 2]\n", r"models must be a mapping"),
    ("models:\n  llm:\n    seq_length: 4\n  soft_preference:\n    num_mm_tokens: 4\n",
     r"models\.soft_preference\.num_mm_tokens: must be smaller than models\.llm\.seq_length"),
    ("models:\n  diffusion:\n    path: ''\n", r"models\.diffusion\.unet: needed when path is empty"),
    ("- a\n- b\n", r"top level must be a mapping"),
    ("train: [\n", r"not valid YAML"),
])
def test_bad_values_fail_at_load(tmp_path, text, pattern):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=pattern) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_overrides_apply_with_types(tmp_path):
    cfg = load_config(CONFIGS / "tiny.yaml", ["train.lr=1e-5", "runtime.mode=pynative", "models.llm.num_layers=3",
                                              "models.diffusion.unet.sample_size=16"])
    assert cfg.train.lr == 1e-5 and isinstance(cfg.train.lr, float)
    assert cfg.runtime.mode == "pynative"
    assert cfg.models.llm.num_layers == 3
    assert cfg.models.diffusion.unet["sample_size"] == 16
    assert cfg.models.diffusion.unet["block_out_channels"] == [32, 64]  # the rest of the mapping stays


def test_bad_overrides_are_named():
    with pytest.raises(ConfigError, match=r"unknown field 'train\.learning_rate'"):
        load_config(CONFIGS / "tiny.yaml", ["train.learning_rate=1"])
    with pytest.raises(ConfigError, match=r"override 'train\.lr': expected key\.path=value"):
        load_config(CONFIGS / "tiny.yaml", ["train.lr"])
    with pytest.raises(ConfigError, match=r"override 'scenario\.x=1': scenario is not a section"):
        load_config(CONFIGS / "tiny.yaml", ["scenario.x=1"])


def test_base_files_merge_and_loops_fail(tmp_path):
    write(tmp_path, "train:\n  lr: 0.5\n  batch_size: 3\nruntime:\n  seed: 7\n", "base.yaml")
    child = write(tmp_path, "base: base.yaml\ntrain:\n  lr: 0.25\n", "child.yaml")
    cfg = load_config(child)
    assert (cfg.train.lr, cfg.train.batch_size, cfg.runtime.seed) == (0.25, 3, 7)
    write(tmp_path, "base: b.yaml\n", "a.yaml")
    write(tmp_path, "base: a.yaml\n", "b.yaml")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        load_config(write(tmp_path, "base: missing.yaml\n", "d.yaml"))


def test_defaults_and_dump_round_trip(tmp_path):
    cfg = load_config(CONFIGS / "tiny.yaml", ["train.max_steps=7"])
    out = tmp_path / "resolved.yaml"
    dump_config(cfg, out)
    again = load_config(out)
    assert again.to_dict() == cfg.to_dict()
    assert not (tmp_path / "resolved.yaml.tmp").exists()
    assert load_config().models.llm.hidden_size == 4096
