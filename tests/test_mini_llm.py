"""PMG-mini, LLM side: the oracle, the training arrays, one training step, exact resume, and the committed model.

The last tests load the committed weights (research/pmg/assets/mini/llm/) and run the keyword stage itself
(research.pmg.keywords: MindFormers generate, greedy, KV cache) on simulated users drawn with a seed the
model was not trained on, scoring the parsed answers against the oracle.
"""
import dataclasses
import json

import numpy as np
import pytest

from research.pmg.config import ConfigError, KeywordsConfig, LlamaConfig, RuntimeConfig
from research.pmg.keywords import parse_keywords
from research.pmg.mini import llm_data
from research.pmg.mini.llm_config import MiniLLMConfig, MiniTrainConfig, load_mini_llm_config
from research.pmg.records.samples import Item, Sample
from tests.tiny_models import REPO

MINI_CONFIG = REPO / "configs" / "mini" / "llm.yaml"
ASSETS = REPO / "research" / "pmg" / "assets" / "mini" / "llm"
HELD_OUT_SEED = 7  # the committed model was trained on seed 0 (manifest) and evaluated on seed 1


def _item(caption, theme, emoji="🐱"):
    return Item(id=caption.replace(" ", "_"), title=caption, category=theme, attributes={"emoji": emoji})


CATS = [_item("cat face", "cats"), _item("crying cat face", "cats"), _item("weary cat face", "cats"),
        _item("pouting cat face", "cats"), _item("grinning cat face with smiling eyes", "cats")]


# ---------------------------------------------------------------------------------------------------------------------
# The oracle
# ---------------------------------------------------------------------------------------------------------------------
def test_oracle_reads_a_cat_lover_and_a_mixed_history():
    assert llm_data.preference_answer(CATS, "character") == ["cat"]
    assert llm_data.preference_answer(CATS, "emotion") == ["happy", "angry", "tired"]  # counts tie: most recent first
    assert llm_data.preference_answer(CATS, "style") == ["cute", "cartoon", "flat"]
    mixed = [_item("red apple", "food"), _item("cat face", "cats"), _item("taco", "food"), _item("rose", "plants"),
             _item("crying cat face", "cats")]
    assert llm_data.preference_answer(mixed, "character") == ["cat", "food"]  # both twice; cats seen last
    assert llm_data.preference_answer(mixed, "emotion") == ["hungry", "sad", "calm"]
    assert llm_data.preference_answer(mixed, "style") == ["cute", "cartoon", "flat"]
    one_each = [_item("rose", "plants"), _item("taco", "food")]
    assert llm_data.preference_answer(one_each, "character") == ["food"]  # nothing twice: the most recent theme


def test_oracle_describes_a_target_sticker():
    crying = _item("crying cat face", "cats")
    assert llm_data.target_answer(crying, "character") == ["cat face", "cat"]
    assert llm_data.target_answer(crying, "emotion") == ["sad"]
    assert llm_data.target_answer(_item("face with tears of joy", "faces"), "character") == \
        ["tears", "joy", "smiley face"]
    assert llm_data.target_answer(_item("broken heart", "hearts"), "emotion") == ["sad", "loving"]
    assert llm_data.target_answer(_item("slice of pizza", "food"), "character") == ["slice", "pizza", "food"]
    assert llm_data.target_answer(_item("heavy heart exclamation mark ornament", "hearts"), "character") == \
        ["exclamation mark ornament", "heart"]  # at most three words a phrase
    assert llm_data.target_answer(_item("cloud", "weather"), "style") == ["simple", "pastel", "flat"]
    assert llm_data.integrate_answer(["flat", "cat", "cute", "happy", "heart"], 3) == ["cat", "happy", "heart"]
    assert llm_data.integrate_answer(["flat", "cat", "cute"], 3) == ["cat", "flat", "cute"]


def test_answers_are_numbered_lists_the_keyword_parser_reads_back():
    for keywords in (["cat"], ["cat face", "stuck-out tongue", "smiley face"], ["sad", "loving"]):
        answer = llm_data.render_answer(keywords)
        assert parse_keywords(answer).keywords == tuple(keywords)
    assert llm_data.render_answer(["cat", "heart"]) == "1. cat\n2. heart"


def test_pairs_use_the_keyword_stage_prompts_and_what_they_show():
    from research.pmg.keywords.prompts import PromptBuilder, load_templates, resolve_templates

    templates = load_templates(resolve_templates("", "stickers"))
    items = {i.id: i for i in CATS + [_item("taco", "food", "🌮")]}
    sample = Sample(id="u1:0", user_id="u1", history=tuple(i.id for i in CATS), target="taco", split="train",
                    conversation=("Send me cat pictures please", "Here is Mochi judging me"))
    # A budget that fits three history items: the oracle must judge the three the prompt shows.
    full = PromptBuilder(templates, "llama2", per_attribute=5, max_item_chars=200, count_tokens=len, budget=10**6)
    size = len(full.preference(sample, items)[0].text)
    oldest_two = len("- cat face (🐱; cats)\n") + len("- crying cat face (🐱; cats)\n")
    short = PromptBuilder(templates, "llama2", per_attribute=5, max_item_chars=200, count_tokens=len,
                          budget=size - oldest_two)
    pairs = llm_data.preference_pairs(short, [sample], items)
    assert [p.attribute for p in pairs] == ["character", "emotion", "style"]
    assert pairs[0].prompt == short.preference(sample, items)[0].text and pairs[0].history_used == 3
    assert "crying cat face" not in pairs[1].prompt and "weary cat face" in pairs[1].prompt
    assert pairs[1].keywords == tuple(llm_data.preference_answer(CATS[2:], "emotion"))
    targets = llm_data.target_pairs(full, [items["taco"]])
    assert [p.keywords for p in targets] == [("taco", "food"), ("hungry",), ("colorful", "detailed", "flat")]
    integrate = llm_data.integrate_pairs(full, [["cat", "happy", "cute", "heart"]], 4, caps=[3], seed=0)
    for pair in integrate:
        listed = [line[2:] for line in pair.prompt.splitlines() if line.startswith("- ")]
        assert len(listed) > 3 and "Pick the 3 most distinctive" in pair.prompt
        assert list(pair.keywords) == llm_data.integrate_answer(listed, 3)


def test_token_arrays_mark_the_answer_and_its_eos():
    pairs = [llm_data.Pair("target", "emotion", "p q r", ("sad",)), llm_data.Pair("preference", "style", "p", ("x", "y"))]
    vocab = {w: i + 10 for i, w in enumerate("p q r 1. 2. sad x y".split())}
    prompt = lambda text: [1] + [vocab[w] for w in text.split()]  # noqa: E731
    answer = lambda text: [vocab[w] for w in text.split()]  # noqa: E731
    arrays = llm_data.encode_pairs(pairs, prompt, answer, seq_length=8, max_answer=5, pad_id=0, eos_id=2)
    assert arrays.ids[0].tolist() == [1, 10, 11, 12, 13, 15, 0, 0]  # <s> p q r 1. sad, then pad (EOS never fed)
    assert arrays.positions[0].tolist() == [3, 4, 5, 0, 0] and arrays.labels[0].tolist() == [13, 15, 2, 0, 0]
    assert arrays.answer_mask[0].tolist() == [1, 1, 1, 0, 0]
    assert arrays.ids[1].tolist() == [1, 10, 13, 16, 14, 17, 0, 0]
    assert arrays.labels[1].tolist() == [13, 16, 14, 17, 2] and arrays.positions[1].tolist() == [1, 2, 3, 4, 5]
    assert arrays.kinds.tolist() == [1, 0]
    with pytest.raises(ValueError, match="max_new_tokens = 4"):
        llm_data.encode_pairs(pairs, prompt, answer, seq_length=8, max_answer=4, pad_id=0, eos_id=2)
    with pytest.raises(ValueError, match="llm.seq_length = 5"):
        llm_data.encode_pairs(pairs, prompt, answer, seq_length=5, max_answer=5, pad_id=0, eos_id=2)


def test_score_f1_and_exact():
    assert llm_data.keyword_f1(["cat", "dog"], ["cat"]) == pytest.approx(2 / 3)
    assert llm_data.keyword_f1([], []) == 1.0 and llm_data.keyword_f1(["x"], ["y"]) == 0.0


# ---------------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------------
def test_config_loads_and_names_bad_fields(tmp_path):
    cfg = load_mini_llm_config(MINI_CONFIG)
    assert cfg.keywords.max_new_tokens < cfg.llm.seq_length and cfg.world.seed != cfg.world.eval_seed
    with pytest.raises(ConfigError, match="unknown field 'train.lrr'"):
        load_mini_llm_config(MINI_CONFIG, ["train.lrr=1"])
    with pytest.raises(ConfigError, match="train.mix: unknown kind"):
        load_mini_llm_config(MINI_CONFIG, ["train.mix={chat: 1.0}"])
    with pytest.raises(ConfigError, match="llm.checkpoint"):
        load_mini_llm_config(MINI_CONFIG, ["llm.checkpoint=x.ckpt"])
    with pytest.raises(ConfigError, match="train.early_mix: unknown kind"):
        load_mini_llm_config(MINI_CONFIG, ["train.early_steps=10", "train.early_mix={chat: 1.0}"])


def test_curriculum_switches_the_kind_mix_after_early_steps():
    from research.pmg.mini.llm_train import batch_rows, mix_at

    train = MiniTrainConfig(max_steps=10, mix={"preference": 1.0}, early_mix={"target": 1.0}, early_steps=3)
    assert [mix_at(train, s) for s in (0, 2, 3, 9)] == [{"target": 1.0}] * 2 + [{"preference": 1.0}] * 2
    assert mix_at(MiniTrainConfig(), 0) == MiniTrainConfig().mix  # no curriculum by default
    arrays = llm_data.TokenArrays(ids=np.zeros((4, 2)), positions=np.zeros((4, 1)), labels=np.zeros((4, 1)),
                                  answer_mask=np.ones((4, 1)), kinds=np.array([0, 0, 1, 1], dtype=np.int32))
    assert set(arrays.kinds[batch_rows(arrays, mix_at(train, 0), 8, 0, 0)]) == {1}
    assert set(arrays.kinds[batch_rows(arrays, mix_at(train, 5), 8, 0, 5)]) == {0}


# ---------------------------------------------------------------------------------------------------------------------
# Training: one step lowers the loss; an interrupted run resumes exactly
# ---------------------------------------------------------------------------------------------------------------------
def _tiny_prepared(cfg):
    from research.pmg.mini.llm_train import Prepared

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(40)]
    pairs = [llm_data.Pair("preference", "character", " ".join(rng.choice(words, size=rng.integers(3, 8))),
                           tuple(rng.choice(words[:6], size=2, replace=False))) for _ in range(24)]
    vocab = {w: i + 3 for i, w in enumerate(words + ["1.", "2."])}
    arrays = llm_data.encode_pairs(pairs, lambda t: [1] + [vocab[w] for w in t.split()],
                                   lambda t: [vocab[w] for w in t.split()], seq_length=cfg.llm.seq_length,
                                   max_answer=cfg.keywords.max_new_tokens, pad_id=0, eos_id=2)
    return Prepared(pairs=pairs, arrays=arrays, eval_pairs=pairs[:4], eval_arrays=arrays, tokenizer_path=None,
                    eval_data=None, data_hash="test", stats={})


def _tiny_cfg(tmp_path, **train):
    settings = dict(batch_size=4, lr=1e-2, max_steps=4, warmup_steps=0, save_every=2, eval_every=0, eval_batches=0,
                    log_every=0, mix={"preference": 1.0})
    settings.update(train)
    return MiniLLMConfig(runtime=RuntimeConfig(device="CPU", precision="fp32", seed=3, output_dir=str(tmp_path)),
                         llm=LlamaConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2,
                                         intermediate_size=64, seq_length=16),
                         keywords=KeywordsConfig(max_new_tokens=6), train=MiniTrainConfig(**settings))


def test_one_training_step_lowers_the_answer_loss(runtime, tmp_path):
    from research.pmg.mini import llm_train

    cfg = _tiny_cfg(tmp_path, max_steps=1, lr=3e-2)
    prepared = _tiny_prepared(cfg)
    model = llm_train.build_trainable_llama(cfg, runtime, cfg.train.batch_size)
    loss_net = llm_train.AnswerLoss.build(model)
    step = llm_train.build_step(loss_net, cfg)
    batch = llm_train._tensors(prepared.arrays.batch(np.arange(4)))
    before = float(loss_net(*batch).asnumpy())
    assert before == pytest.approx(np.log(cfg.llm.vocab_size), rel=0.2)  # random init: near-uniform answers
    step_loss = float(step(*batch)[0].asnumpy())
    after = float(loss_net(*batch).asnumpy())
    assert step_loss == pytest.approx(before, rel=1e-5) and after < before - 0.05


def test_interrupted_training_resumes_exactly(runtime, tmp_path):
    from research.pmg.mini import llm_train

    cfg = _tiny_cfg(tmp_path)
    prepared = _tiny_prepared(cfg)
    full, full_model = llm_train.train(cfg, runtime, prepared, tmp_path / "full", resume=False, log=lambda m: None)
    assert [p.name for p in llm_train.list_checkpoints(tmp_path / "full" / "checkpoints")] == \
        ["step-000002", "step-000004"]

    out = tmp_path / "interrupted"
    first, _ = llm_train.train(cfg, runtime, prepared, out, resume=False, stop_after=2, log=lambda m: None)
    assert first.steps_done == 2 and first.losses == full.losses[:2]
    (out / "checkpoints" / ".step-000003.partial").mkdir()  # a crash while writing the next one: ignored
    second, second_model = llm_train.train(cfg, runtime, prepared, out, resume=True, log=lambda m: None)
    assert second.steps_done == 4 and second.losses == full.losses[2:]
    for (name, a), (_, b) in zip(full_model.parameters_and_names(), second_model.parameters_and_names()):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy(), err_msg=name)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]  # the resumed run's log continues the first one's


# ---------------------------------------------------------------------------------------------------------------------
# The committed model, through the keyword stage, on held-out users
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def committed():
    manifest = json.loads((ASSETS / "manifest.json").read_text(encoding="utf-8"))
    for name, digest in manifest["files"].items():  # the files are the ones the manifest measured
        import hashlib

        assert hashlib.sha256((ASSETS / name).read_bytes()).hexdigest() == digest, name
    return manifest


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    from research.pmg.mini.llm_train import build_world

    data, _ = build_world(tmp_path_factory.mktemp("held-out") / "world", users=10, events=9, seed=HELD_OUT_SEED)
    return data


def _mini_cfg(manifest):
    cfg = load_mini_llm_config(MINI_CONFIG)
    assert manifest["config"]["llm"] == dataclasses.asdict(cfg.llm)  # the committed model is this config's
    assert HELD_OUT_SEED not in (manifest["config"]["world"]["seed"], manifest["config"]["world"]["eval_seed"])
    return cfg


@pytest.fixture(scope="module")
def held_out_run(runtime, committed, held_out, tmp_path_factory):
    """The keyword stage (research.pmg.keywords.extract) with the committed model on 16 held-out samples, scored."""
    from research.pmg.mini.llm_train import evaluate_keywords

    cfg = _mini_cfg(committed)
    return evaluate_keywords(cfg, runtime, held_out, ASSETS / "llm.ckpt", ASSETS / "tokenizer.model",
                             tmp_path_factory.mktemp("held-out-run"), samples=16)


def test_committed_model_answers_held_out_users_in_the_keyword_format(held_out_run):
    """Every answer of the committed model to the keyword stage's prompts parses as a keyword list (README-llm.md:
    "all answers parse, no sample fails"): 16 samples x (3 preference + 3 target) answers."""
    statuses = held_out_run["statuses"]
    assert held_out_run["samples"] == 16 and statuses["failed"] == 0 and statuses["ok"] == 16
    assert statuses["answers"]["ok"] == statuses["samples"] * 6


# The committed model's F1 on these 16 held-out samples (seed-7 users), as measured (evaluate_keywords rounds to 4
# decimals; greedy decoding on CPU gives the same answers every run). The 500-step model committed before scored
# preference 0.38 and target 0.19.
MEASURED_F1 = {"preference": 0.6396, "preference/character": 0.5625, "preference/emotion": 0.5437,
               "preference/style": 0.8125, "target": 0.6089, "target/character": 0.2044, "target/emotion": 0.7111,
               "target/style": 0.9111}


def test_committed_model_does_not_regress_below_measured_held_out_scores(held_out_run):
    scores = held_out_run["scores"]
    below = {name: (scores[name]["f1"], measured) for name, measured in MEASURED_F1.items()
             if scores[name]["f1"] < measured}
    assert not below, below


# The acceptance targets (README-llm.md).
ACCEPTANCE_F1 = {"preference/character": 0.8, "preference": 0.7, "target": 0.8}


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "targets: F1 preference/character >= 0.8, preference >= 0.7, target >= 0.8 (README-llm.md); measured on these "
    "16 held-out samples 0.5625, 0.6396, 0.6089 (0.79 / 0.75 / 0.67 on the manifest's seed-1 users): the 2,000-step "
    "model reads the history but target character phrases are weak"))
def test_committed_model_reaches_the_acceptance_scores(held_out_run):
    scores = held_out_run["scores"]
    for name, target in ACCEPTANCE_F1.items():
        assert scores[name]["f1"] >= target, (name, scores[name])


def test_committed_model_names_the_cat_lovers_character(runtime, committed, tmp_path):
    from research.pmg.keywords.engine import KeywordLLM
    from research.pmg.keywords.prompts import PromptBuilder, load_templates, resolve_templates
    from research.pmg.mini.llm_train import pmg_config

    cfg = _mini_cfg(committed)
    pmg = pmg_config(cfg, ASSETS / "llm.ckpt", ASSETS / "tokenizer.model", tmp_path)
    llm = KeywordLLM(pmg, dataclasses.replace(cfg.keywords, batch_size=2), runtime)
    builder = PromptBuilder(load_templates(resolve_templates("", "stickers")), cfg.keywords.chat_format,
                            per_attribute=cfg.keywords.per_attribute, max_item_chars=cfg.keywords.max_item_chars,
                            count_tokens=llm.count_tokens, budget=llm.budget)
    items = {i.id: i for i in CATS}
    sample = Sample(id="cat:0", user_id="cat", history=tuple(i.id for i in CATS), target=CATS[0].id, split="test",
                    conversation=("Did your cat knock the plant over again?", "Of course she did, twice"))
    character, emotion = builder.preference(sample, items)[:2]
    answers = llm.generate([character.text, emotion.text])
    assert "cat" in parse_keywords(answers[0]).keywords, answers[0]
    assert set(parse_keywords(answers[1]).keywords) & {"happy", "angry", "tired", "sad"}, answers[1]


def test_world_folder_the_project_did_not_make_is_not_deleted(tmp_path):
    """build_world rebuilds a world made with other settings from scratch; a user's folder at that path (no world
    stamp, no .pmg-owned) is refused and left as it was, never removed."""
    from research.pmg.mini.llm_train import build_world
    from research.pmg.ownership import OwnershipError

    root = tmp_path / "world"
    root.mkdir()
    (root / "thesis.tex").write_text("precious")
    with pytest.raises(OwnershipError, match="was not made by this project"):
        build_world(root, users=3, events=4, seed=0)
    assert (root / "thesis.tex").read_text() == "precious"
