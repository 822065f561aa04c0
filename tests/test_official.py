"""The official-reproduction config (configs/official_movie.yaml): it loads, and a tiny stand-in of it runs end to end.

The stand-in is the official config with only the fields of :data:`STAND_IN` changed (tiny random-init models in
place of the weight folders, small sizes and step counts, offline data and metrics), and the test checks that no
other field differs, so the stand-in cannot drift from the real config unnoticed. It keeps everything the demo
fixes: the movie scenario, SD 2.x's conditioning width (1024) and 77-token windows, v-prediction, DPM-Solver,
guidance 9, the 8 + 5 keywords of the demo's prompt set, weight sets (1, 1) and (2, 1) by repetition, three
chunked windows per keyword group and a = 2/3. It runs through the pipeline (data, keywords, training,
generation, evaluation, report) on the bundled MovieLens sample.
"""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from research.pmg.config import PMGConfig, load_config
from tests.pipeline_helpers import stamps
from tests.subprocess_env import stage_env
from tests.tiny_models import REPO

OFFICIAL = REPO / "configs" / "official_movie.yaml"
WINDOW, CHUNKS, WIDTH = 77, 3, 1024  # SD 2.x's text window and conditioning width; the config's max_chunks

TINY_TEXT = dict(vocab_size=1000, bos_token_id=998, eos_token_id=999)  # the offline tiny CLIP tokenizer's ids
# Every field the stand-in changes, and nothing else (test_stand_in_differs_only_in_the_listed_fields).
STAND_IN = {
    "runtime": {"output_dir": None},  # the test's folder
    "data": {"raw": "",  # the bundled MovieLens sample instead of data/ml-latest-small
             "max_users": 4},
    "models": {
        "llm": {"checkpoint": "", "tokenizer": "", "vocab_size": 512, "hidden_size": 64, "num_layers": 2,
                "num_heads": 4, "intermediate_size": 128},  # random init, offline tokenizer
        "diffusion": {
            "path": "",
            "unet": {"sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
                     "block_out_channels": [32, 64], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                     "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "cross_attention_dim": WIDTH,
                     "attention_head_dim": 8, "norm_num_groups": 32, "use_linear_projection": True},  # as SD 2.x
            "vae": {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 2,
                    "up_block_types": ["UpDecoderBlock2D"] * 2, "block_out_channels": [32, 32], "latent_channels": 4,
                    "layers_per_block": 1, "norm_num_groups": 32, "sample_size": 16},
            "text_encoder": {**TINY_TEXT, "hidden_size": WIDTH, "intermediate_size": 128, "num_hidden_layers": 1,
                             "num_attention_heads": 16, "max_position_embeddings": WINDOW, "hidden_act": "gelu"}},
        "clip": {"path": "",
                 "text_config": {**TINY_TEXT, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                 "num_attention_heads": 4, "max_position_embeddings": WINDOW},
                 "vision_config": {"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                                   "num_hidden_layers": 1, "num_attention_heads": 4}}},
    "keywords": {"max_new_tokens": 8},
    "train": {"max_steps": 2, "warmup_steps": 1, "batch_size": 2, "grad_accum_steps": 1, "eval_batches": 1},
    "generate": {"size": 16, "steps": 2},  # the tiny UNet's native 16 px instead of 768
    "evaluate": {"metrics": ["ssim", "clip"],  # LPIPS needs converted VGG/AlexNet weights: none offline
                 "bootstrap_samples": 200, "permutations": 200},
}
# The fields the stand-in may change, written out (not derived from STAND_IN): a new override in STAND_IN, or a
# field of the official config that stops applying, fails test_stand_in_differs_only_in_the_listed_fields.
ALLOWED = {
    "runtime.output_dir", "data.raw", "data.max_users",
    "models.llm.checkpoint", "models.llm.tokenizer", "models.llm.vocab_size", "models.llm.hidden_size",
    "models.llm.num_layers", "models.llm.num_heads", "models.llm.intermediate_size",
    "models.diffusion.path", "models.diffusion.unet", "models.diffusion.vae", "models.diffusion.text_encoder",
    "models.clip.path", "models.clip.text_config", "models.clip.vision_config",
    "keywords.max_new_tokens",
    "train.max_steps", "train.warmup_steps", "train.batch_size", "train.grad_accum_steps", "train.eval_batches",
    "generate.size", "generate.steps",
    "evaluate.metrics", "evaluate.bootstrap_samples", "evaluate.permutations",
}


def leaves(obj, prefix: str = "") -> dict:
    """Every field of a config dataclass by dotted path (architecture mappings are single fields)."""
    out = {}
    for f in dataclasses.fields(obj):
        if f.metadata.get("internal"):
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(leaves(value, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = value
    return out


def stand_in_file(folder: Path) -> Path:
    """The stand-in config: the official file as its base, STAND_IN over it."""
    values = json.loads(json.dumps(STAND_IN))
    values["runtime"]["output_dir"] = str(folder / "run")
    path = folder / "official_stand_in.yaml"
    path.write_text(yaml.safe_dump({"base": str(OFFICIAL), **values}, sort_keys=False), encoding="utf-8")
    return path


def test_official_config_loads_with_the_demo_settings():
    cfg = load_config(OFFICIAL)  # loads and validates though weights/ is absent
    assert isinstance(cfg, PMGConfig) and cfg.scenario == "movielens"
    g, k, m = cfg.generate, cfg.keywords, cfg.models
    assert (m.diffusion.path, m.clip.path, m.clip.projection_dim) == ("weights/sd-v2-1",
                                                                       "weights/clip-vit-base-patch32-ms", 512)
    assert m.diffusion.scheduler.prediction_type == "v_prediction" and m.diffusion.tokenizer_max_length == 77
    assert (g.scheduler, g.steps, g.guidance, g.size) == ("dpm_solver", 30, 9.0, 768)
    assert g.weighting == "repetition" and g.weight_sets == [[1.0, 1.0], [2.0, 1.0]] and g.images_per_set == 1
    assert (g.long_prompts, g.text_chunks) == ("chunk", 3)
    assert g.negative_for(cfg.scenario) == "broken text, unclear, twisted" and g.score_form == "log"
    # W_P = 2 on log(logit_p) beside log(logit_t): z_demo = log(100 d_t) + 2 log(100 d_p) = 3 z + 3 log(100)
    assert g.a == pytest.approx(2 / 3, abs=1e-15)
    assert (k.templates, k.chat_format, k.num_preference, k.per_attribute, k.num_target) == \
        ("movie_official", "human_assistant", 8, 8, 5)
    assert (m.soft_preference.prefix_len, m.soft_preference.num_mm_tokens, m.llm.seq_length) == (4, 4, 512)


def test_official_prompt_set_asks_the_demos_one_question():
    """One general question for N keywords as a numbered list (the demo's stylePrompt without attributes), and a
    target question about a poster without character names; the items shown as title and genres."""
    from research.pmg.keywords.prompts import PromptBuilder, load_templates, resolve_templates
    from research.pmg.records.samples import Item, Sample

    cfg = load_config(OFFICIAL)
    templates = load_templates(resolve_templates(cfg.keywords.templates, cfg.scenario))
    assert [a.name for a in templates.attributes] == ["interests"]
    builder = PromptBuilder(templates, cfg.keywords.chat_format, per_attribute=cfg.keywords.per_attribute,
                            max_item_chars=200, count_tokens=lambda text: len(text.split()), budget=10_000)
    items = {i: Item(id=i, title=f"Movie {i}", genres=("Drama", "Romance"), attributes={"year": "1999"})
             for i in ("1", "2", "3")}
    prompts = builder.preference(Sample(id="u:0", user_id="u", history=("1", "2"), target="3", split="test"), items)
    assert len(prompts) == 1
    text = prompts[0].text
    assert text.startswith(templates.system.strip() + "\n### Human: ") and text.endswith("\n### Assistant:")
    assert "- Movie 1 (Drama, Romance)\n- Movie 2 (Drama, Romance)" in text and "1999" not in text
    assert "numbered list of 8 keywords" in text and "1. first keyword\n2. second keyword" in text
    target = builder.target(items["3"])[0].text
    assert "poster" in target and "names of characters" in target and "Movie 3 (Drama, Romance)" in target


def test_stand_in_differs_only_in_the_listed_fields(tmp_path):
    official, stand_in = leaves(load_config(OFFICIAL)), leaves(load_config(stand_in_file(tmp_path)))
    assert official.keys() == stand_in.keys()
    differing = {path for path in official if official[path] != stand_in[path]}
    assert differing == ALLOWED, (sorted(differing - ALLOWED), sorted(ALLOWED - differing))


@pytest.fixture(scope="module")
def stand_in_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("official")
    config = stand_in_file(folder)
    proc = subprocess.run([sys.executable, "-m", "research.pmg.pipeline", "--config", str(config)], cwd=folder,
                          env=stage_env(), capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return load_config(config), folder / "run"


def test_stand_in_runs_end_to_end(stand_in_run):
    cfg, root = stand_in_run
    assert all(s["state"] == "done" for s in stamps(root).values()) and len(stamps(root)) == 6
    assert (root / "report.md").is_file() and (root / "evaluate" / "results.md").is_file()

    summary = json.loads((root / "keywords" / "keywords.summary.json").read_text())
    assert "movie_official@v1" in json.dumps(summary)
    records = [json.loads(line) for line in (root / "keywords" / "keywords.jsonl").read_text().splitlines()]
    assert records and all(len(r["preference_keywords"]) <= 8 and len(r["target_keywords"]) <= 5 for r in records)
    assert all([a["attribute"] for a in r["preference_detail"]["answers"]] == ["interests"] for r in records)

    # Training encoded the keyword groups in generation's layout: three 77-token windows each, 1024 wide.
    caches = list((root / "cache").glob("train-*/target_ctx.npy"))
    assert len(caches) == 1
    for name in ("target_ctx", "pref_ctx"):
        array = np.load(caches[0].parent / f"{name}.npy", mmap_mode="r")
        assert array.shape[1:] == (CHUNKS * WINDOW, WIDTH), (name, array.shape)

    settings = json.loads((root / "generate" / "settings.json").read_text())
    assert (settings["text_chunks"], settings["weighting"], settings["guidance"], settings["scheduler"]) == \
        (CHUNKS, "repetition", 9.0, "dpm_solver")
    assert settings["negative_prompt"] == "broken text, unclear, twisted" and settings["a"] == 2 / 3
    manifest = [json.loads(line) for line in (root / "generate" / "manifest.jsonl").read_text().splitlines()]
    assert manifest
    for record in manifest:
        candidates = record["candidates"]
        assert [c["weights"] for c in candidates] == [[1.0, 1.0], [2.0, 1.0]]
        d_p, d_t = np.array([c["d_p"] for c in candidates]), np.array([c["d_t"] for c in candidates])
        # z with a = 2/3, recomputed (cosines at or below 1e-6 raised to it, research/pmg/generate/select.py);
        # ties broken by 2/3 d_p + 1/3 d_t, then the first candidate
        z = 2 / 3 * np.log(np.maximum(d_p, 1e-6)) + 1 / 3 * np.log(np.maximum(d_t, 1e-6))
        np.testing.assert_allclose([c["z"] for c in candidates], z, rtol=1e-12, atol=1e-12)
        best = np.flatnonzero(z == z.max())
        assert record["chosen"] == int(best[np.argmax((2 * d_p + d_t)[best])])
        if (d_p > 0).all() and (d_t > 0).all():  # the demo's own rule, over logits 100 x d, picks the same
            assert record["chosen"] == int(np.argmax(np.log(100 * d_t) + 2 * np.log(100 * d_p)))
        with_image = root / "generate" / candidates[record["chosen"]]["image"]
        from PIL import Image

        assert Image.open(with_image).size == (16, 16)


def test_stand_in_generation_encodes_every_group_in_three_windows(stand_in_run, runtime):
    """The generation stage's own encoder (build_models) chunks: a preference text too long for one window reaches
    its second window when repeated (w_p = 2), and the unconditional branch has the same length."""
    from research.pmg.generate.conditioning import candidate_contexts, unconditional_context
    from research.pmg.generate.run import build_models

    cfg, _ = stand_in_run
    models = build_models(cfg, cfg.generate, runtime)
    preference = ", ".join(f"keyword{i} movie poster" for i in range(8))  # about 40 tokens: twice is two windows
    ctx = candidate_contexts(models.encode, "poster", preference, None, cfg.generate.weight_sets,
                             cfg.generate.weighting)
    group = CHUNKS * WINDOW
    assert ctx.shape == (2, 2 * group, WIDTH)
    empty = models.encode([""])[0, :WINDOW]
    second = slice(group + WINDOW, group + 2 * WINDOW)  # the preference group's second window
    np.testing.assert_allclose(ctx[0, second], empty, atol=1e-5)  # once: fits the first window
    assert np.abs(ctx[1, second] - empty).max() > 1e-3  # twice: the second repeat reaches the second window
    uncond = unconditional_context(models.encode, cfg.generate.negative_for(cfg.scenario))
    assert uncond.shape == (2 * group, WIDTH) and math.isfinite(float(np.abs(uncond).sum()))


def test_chunking_is_part_of_the_train_and_generate_stage_keys(tmp_path):
    """Changing how long keyword texts are encoded re-runs training and generation under the pipeline (both read
    it); the default (cut) leaves the fields out of the keys, so stamps written before they existed stay valid."""
    from research.pmg.pipeline.stages import BY_NAME, STAGE_NAMES, stage_key

    inputs = {name: "d" for name in STAGE_NAMES}

    def keys(*overrides):
        cfg = load_config(OFFICIAL, [f"runtime.output_dir={tmp_path}", *overrides])
        return {s: stage_key(BY_NAME[s], cfg, inputs) for s in STAGE_NAMES}

    chunked = keys()
    cut = keys("generate.long_prompts=cut")
    assert [s for s in STAGE_NAMES if chunked[s] != cut[s]] == ["train", "generate"]
    more = keys("generate.max_chunks=4")
    assert [s for s in STAGE_NAMES if more[s] != chunked[s]] == ["train", "generate"]
    assert keys("generate.long_prompts=cut", "generate.max_chunks=4") == cut  # unused while cutting
