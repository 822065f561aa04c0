"""Generation (research.pmg.generate): batched == separate (also across samples), seeds, conditioning, CLIP parity,
outputs, resume, CLI.

Tiny models from configs/tiny.yaml, 3 denoising steps. One pipeline (one compiled UNet cell) serves the whole
module, so each UNet batch shape compiles once.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import mindspore as ms
from PIL import Image

from research.pmg.cli import USER_ERROR_EXIT, run
from research.pmg.config import ConfigError
from research.pmg.config.generate import GenerateConfig
from research.pmg.generate import outputs
from research.pmg.generate.conditioning import candidate_contexts, repeated, unconditional_context
from research.pmg.generate.pipeline import GenerationPipeline, call_groups, to_uint8
from research.pmg.generate.run import GenerationModels, build_models, generate, generation_scheduler
from research.pmg.generate.scorer import ClipScorer, clip_image_processor
from research.pmg.generate.select import select
from research.pmg.runtime import set_execution_mode
from tests.tiny_models import TINY_CONFIG, tiny_config

STEPS = 3
TARGET_TEXT, PREFERENCE_TEXT = "bear face, animals", "cat, frog, cartoon, cute"


@pytest.fixture(scope="module")
def gen_cfg(runtime):
    return tiny_config(runtime.output_dir)


def gen_settings(**changes) -> GenerateConfig:
    settings = GenerateConfig(**{"steps": STEPS, "scheduler": "ddim", "micro_batch": 4, **changes})
    settings.validate("test: ")
    return settings


@pytest.fixture(scope="module")
def models(gen_cfg, runtime, tiny_tokenizers, tiny_diffusion):
    from research.pmg.models import build_clip_parts
    from research.pmg.models.conditioning import encode_texts
    from research.pmg.runtime import seed_everything

    sd = tiny_diffusion
    seed_everything(gen_cfg.runtime.seed)  # random-init CLIP: the same whatever ran before in this worker
    clip = build_clip_parts(gen_cfg, runtime, tiny_tokenizers)
    pipeline = GenerationPipeline(sd, generation_scheduler(gen_cfg, gen_settings()), steps=STEPS, guidance=7.5,
                                  micro_batch=4)
    max_length = gen_cfg.models.diffusion.tokenizer_max_length
    return GenerationModels(pipeline=pipeline, scorer=ClipScorer(clip, clip_image_processor(clip)),
                            encode=lambda texts: encode_texts(sd.text_encoder, sd.tokenizer, texts, max_length))


@pytest.fixture(scope="module")
def candidates(models):
    """K = 2 weight sets x M = 2 images: contexts (4, T, ctx_dim), the unconditional context, seeds."""
    contexts = candidate_contexts(models.encode, TARGET_TEXT, PREFERENCE_TEXT, None, [[1, 1], [2, 1]], "scaling")
    seeds = [(7, 3, k, m) for k in range(2) for m in range(2)]
    return np.repeat(contexts, 2, axis=0), unconditional_context(models.encode, "blurry"), seeds


# ---------------------------------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheduler", ["ddim", "dpm_solver"])
def test_batched_equals_separate_and_micro_batches(scheduler, models, candidates, gen_cfg):
    pipeline = models.pipeline
    cond, uncond, seeds = candidates
    latents = pipeline.initial_latents(seeds)
    pipeline.scheduler = generation_scheduler(gen_cfg, gen_settings(scheduler=scheduler))
    try:
        batched = pipeline(cond, uncond, latents)  # one UNet call of 4 candidates (8 rows with guidance) per step
        separate = np.concatenate([pipeline(cond[i:i + 1], uncond, latents[i:i + 1]) for i in range(4)])
        pipeline.micro_batch = 3  # 3 + 1 candidate, the last micro-batch padded to 3
        micro = pipeline(cond, uncond, latents)
    finally:
        pipeline.micro_batch = 4
        pipeline.scheduler = generation_scheduler(gen_cfg, gen_settings())
    assert batched.shape == (4, 16, 16, 3) and batched.dtype == np.float32
    assert batched.min() >= 0 and batched.max() <= 1
    print(f"{scheduler}: batched vs separate max abs diff {np.abs(batched - separate).max():.2e}, "
          f"vs micro-batched {np.abs(batched - micro).max():.2e}")
    np.testing.assert_allclose(batched, separate, rtol=0, atol=1e-5)
    np.testing.assert_allclose(batched, micro, rtol=0, atol=1e-5)
    # the candidates themselves differ (other weights or other seeds)
    assert min(np.abs(batched[i] - batched[j]).mean() for i in range(4) for j in range(i)) > 1e-2


@pytest.mark.parametrize("scheduler", ["ddim", "dpm_solver"])
def test_stream_shares_unet_calls_across_samples(scheduler, models, candidates, gen_cfg, monkeypatch):
    """Blocks (samples) of 3, 2 and 4 candidates in calls of 4: [3 + 1], [1 + 3], [1 + 3 padding]. Each block's
    images are those it gets alone, within the batching tolerance above."""
    pipeline = models.pipeline
    cond, uncond, seeds = candidates
    rng = np.random.default_rng(0)
    cond = np.concatenate([cond, cond[::-1] * 0.5, cond[:1] + rng.normal(0, 0.1, cond[:1].shape)]).astype(np.float32)
    latents = pipeline.initial_latents([(7, i, 0, 0) for i in range(9)])
    bounds = [0, 3, 5, 9]
    blocks = [(cond[a:b], latents[a:b]) for a, b in zip(bounds, bounds[1:])]
    pulled, calls = [], []

    def source():
        for i, block in enumerate(blocks):
            pulled.append(i)
            yield block

    sample = pipeline._sample
    monkeypatch.setattr(pipeline, "_sample", lambda c, u, x: calls.append(len(c)) or sample(c, u, x))
    pipeline.scheduler = generation_scheduler(gen_cfg, gen_settings(scheduler=scheduler))
    try:
        stream = pipeline.stream(source(), uncond, 4)
        first = next(stream)
        assert pulled == [0, 1] and calls == [4]  # blocks are pulled only to fill the next call
        shared = [first] + list(stream)
        assert calls == [4, 4, 4]
        alone = [pipeline(c, uncond, x) for c, x in blocks]
    finally:
        pipeline.scheduler = generation_scheduler(gen_cfg, gen_settings())
    assert [len(images) for images in shared] == [3, 2, 4]
    print(f"{scheduler}: shared calls vs alone max abs diff "
          f"{max(np.abs(s - a).max() for s, a in zip(shared, alone)):.2e}")
    for images, reference in zip(shared, alone):
        np.testing.assert_allclose(images, reference, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="one initial latent per context"):
        list(pipeline.stream([(cond[:2], latents[:1])], uncond, 4))


def test_call_groups_fill_whole_calls_and_reproduce_bit_for_bit(models, candidates):
    assert call_groups([3] * 8, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # 12 candidates = 3 calls of 4
    assert call_groups([3] * 5, 4) == [[0, 1, 2, 3], [4]]  # the last group ends in a padded call
    assert call_groups([3] * 16, 24) == [list(range(8)), list(range(8, 16))]
    assert call_groups([3] * 3, 3) == [[0], [1], [2]]
    assert call_groups([2, 2, 3, 1], 4) == [[0, 1], [2, 3]] and call_groups([3, 2, 4], 4) == [[0, 1, 2]]
    # streaming the second group alone (a resumed run) runs its samples in the calls all of them ran in
    pipeline = models.pipeline
    cond, uncond, seeds = candidates
    scaled = np.concatenate([cond[[i % 4, (i + 1) % 4, (i + 2) % 4]] * (1 + i / 8) for i in range(8)])
    latents = pipeline.initial_latents([(7, i, 0, 0) for i in range(24)])
    blocks = [(scaled[3 * i:3 * i + 3], latents[3 * i:3 * i + 3]) for i in range(8)]
    everything = list(pipeline.stream(blocks, uncond, 4))
    resumed = list(pipeline.stream(blocks[4:], uncond, 4))
    for images, again in zip(everything[4:], resumed):
        np.testing.assert_array_equal(images, again)


def test_same_seed_same_image_other_seed_other_image(models, candidates):
    pipeline = models.pipeline
    cond, uncond, seeds = candidates
    first = to_uint8(pipeline(cond, uncond, pipeline.initial_latents(seeds)))
    again = to_uint8(pipeline(cond, uncond, pipeline.initial_latents(seeds)))
    other = to_uint8(pipeline(cond, uncond, pipeline.initial_latents([(8,) + s[1:] for s in seeds])))
    np.testing.assert_array_equal(first, again)
    assert all(np.abs(first[i].astype(int) - other[i]).mean() > 5 for i in range(4))
    # a candidate's noise depends on its own seed only, not on its batch
    np.testing.assert_array_equal(pipeline.initial_latents(seeds)[2], pipeline.initial_latents(seeds[2:3])[0])
    assert pipeline.initial_latents(seeds).shape == (4, 4, 8, 8)


def test_image_size_must_fit_the_models(tiny_diffusion, gen_cfg):
    scheduler = generation_scheduler(gen_cfg, gen_settings())
    assert GenerationPipeline(tiny_diffusion, scheduler, steps=1, guidance=1.0, micro_batch=1, size=32).latent_shape \
        == (4, 16, 16)
    with pytest.raises(ValueError, match="multiple of 4"):
        GenerationPipeline(tiny_diffusion, scheduler, steps=1, guidance=1.0, micro_batch=1, size=18)


# ---------------------------------------------------------------------------------------------------------------------
# Conditioning
# ---------------------------------------------------------------------------------------------------------------------
def test_scaling_weights_each_group_and_the_soft_embedding(models):
    encode = models.encode
    soft = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    target, preference = encode([TARGET_TEXT, PREFERENCE_TEXT])
    n = target.shape[0]
    ctx = candidate_contexts(encode, TARGET_TEXT, PREFERENCE_TEXT, soft, [[1, 1], [1, 2], [2, 1]], "scaling",
                             soft_weight=0.5)
    assert ctx.shape == (3, 2 * n + 4, 32) and ctx.dtype == np.float32
    for row, (w_p, w_t) in enumerate([(1, 1), (1, 2), (2, 1)]):
        np.testing.assert_allclose(ctx[row, :n], w_t * target, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ctx[row, n:2 * n], w_p * preference, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ctx[row, 2 * n:], w_p * 0.5 * soft, rtol=1e-6)
    # without a soft embedding the soft slots are absent, not zero
    assert candidate_contexts(encode, TARGET_TEXT, PREFERENCE_TEXT, None, [[1, 1]], "scaling").shape == (1, 2 * n, 32)


def test_repetition_repeats_text_and_agrees_with_scaling_at_unit_weights(models):
    encode = models.encode
    soft = np.ones((4, 32), np.float32)
    assert repeated("a, b", 3) == "a, b, a, b, a, b" and repeated("a", 0) == "" and repeated("", 2) == ""
    ctx = candidate_contexts(encode, TARGET_TEXT, PREFERENCE_TEXT, soft, [[1, 1], [2, 3]], "repetition",
                             soft_weight=0.5)
    n = 32
    twice, thrice = encode([repeated(PREFERENCE_TEXT, 2), repeated(TARGET_TEXT, 3)])
    np.testing.assert_allclose(ctx[1, :n], thrice, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ctx[1, n:2 * n], twice, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ctx[1, 2 * n:], 0.5 * soft)  # E_m is not scaled by w_p here
    scaled = candidate_contexts(encode, TARGET_TEXT, PREFERENCE_TEXT, soft, [[1, 1]], "scaling", soft_weight=0.5)
    np.testing.assert_allclose(ctx[0], scaled[0], rtol=1e-5, atol=1e-5)
    assert np.abs(ctx[1, :n] - 3 * ctx[0, :n]).max() > 1e-2  # repetition is not scaling


def test_unconditional_context_matches_the_conditional_length(models):
    negative = models.encode(["blurry"])[0]
    uncond = unconditional_context(models.encode, "blurry", soft_len=4)
    assert uncond.shape == (68, 32)
    np.testing.assert_allclose(uncond[:32], negative, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(uncond[32:64], negative, rtol=1e-5, atol=1e-6)
    assert not uncond[64:].any()  # soft slots: zeros
    assert unconditional_context(models.encode, "blurry").shape == (64, 32)


def test_preference_group_can_be_left_out(models):
    soft = np.ones((4, 32), np.float32)
    for weighting in ("scaling", "repetition"):
        ctx = candidate_contexts(models.encode, TARGET_TEXT, None, soft, [[2, 1], [1, 2]], weighting)
        assert ctx.shape == (2, 32 + 4, 32)
        np.testing.assert_allclose(ctx[0, 32:], (2.0 if weighting == "scaling" else 1.0) * soft)
    uncond = unconditional_context(models.encode, "blurry", soft_len=4, preference=False)
    assert uncond.shape == (36, 32) and not uncond[32:].any()


def test_sample_folder_names_are_safe_and_distinct():
    assert outputs.sample_dirname("u001:2") == "u001%3A2"
    assert outputs.sample_dirname("a/b") == "a%2Fb" and outputs.sample_dirname("..") == "%2E%2E"
    assert outputs.candidate_image("u1:0", 2, 1) == "images/u1%3A0/2_1.png"
    ids = ["a:1", "a_1", "a%3A1", "a-1"]
    assert len({outputs.sample_dirname(i) for i in ids}) == len(ids)


# ---------------------------------------------------------------------------------------------------------------------
# CLIP scorer
# ---------------------------------------------------------------------------------------------------------------------
def test_clip_scorer_matches_transformers(tmp_path, runtime, tiny_tokenizers):
    import torch
    from transformers import CLIPImageProcessor

    from ckpt_convert.__main__ import main as convert
    from research.pmg.models.clip import build_clip
    from tests.hf_tiny_models import save_clip

    src, dst = tmp_path / "hf", tmp_path / "clip"
    model = save_clip(src, tiny_tokenizers.clip)
    # a non-default normalisation, so the test fails if the checkpoint's preprocessing is not the one used
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_mean=[0.5, 0.4, 0.3],
                       image_std=[0.2, 0.3, 0.25]).save_pretrained(src)
    assert convert(["clip", "--src", str(src), "--dst", str(dst)]) == 0
    images = np.random.default_rng(0).integers(0, 256, (3, 40, 48, 3), dtype=np.uint8)
    texts = [PREFERENCE_TEXT, TARGET_TEXT]
    set_execution_mode("pynative")  # one pass each: compiling would cost more than it saves
    try:
        parts = build_clip(tiny_config(runtime.output_dir, f"models.clip.path={dst}").models.clip, runtime)
        scorer = ClipScorer(parts, clip_image_processor(parts, dst))
        image, text = scorer.image_features(images), scorer.text_features(texts)
        d_p, d_t = scorer.similarities(images, *texts)
        selection = scorer.choose(images, *texts, a=0.5)
    finally:
        set_execution_mode("graph")
    processor = CLIPImageProcessor.from_pretrained(str(src))
    ids = parts.tokenizer(texts, padding="max_length", max_length=32, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        ref_image = model.get_image_features(processor(images=list(images), return_tensors="pt")["pixel_values"])
        ref_text = model.get_text_features(ids)
    ref_image, ref_text = ref_image.numpy(), ref_text.numpy()
    print(f"CLIP image features max abs diff {np.abs(image - ref_image).max():.2e}, "
          f"text {np.abs(text - ref_text).max():.2e}")
    np.testing.assert_allclose(image, ref_image, rtol=0, atol=1e-4)
    np.testing.assert_allclose(text, ref_text, rtol=0, atol=1e-4)
    assert np.abs(text[0] - text[1]).max() > 1e-2  # texts pool at their own EOS, so they differ

    def cos(x, y):
        return x @ y / np.linalg.norm(x, axis=1) / np.linalg.norm(y)

    np.testing.assert_allclose(d_p, cos(ref_image, ref_text[0]), atol=1e-4)
    np.testing.assert_allclose(d_t, cos(ref_image, ref_text[1]), atol=1e-4)
    assert selection.chosen == select(cos(ref_image, ref_text[0]), cos(ref_image, ref_text[1])).chosen


# ---------------------------------------------------------------------------------------------------------------------
# The stage: outputs, resume, soft preference, command line
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stage_inputs(tmp_path_factory, runtime):
    """The bundled sticker sample, prepared, with keywords made from item titles (standing in for the LLM)."""
    from research.pmg.config.data import DataConfig
    from research.pmg.data.prepare import prepare
    from research.pmg.records.samples import load_prepared

    root = tmp_path_factory.mktemp("generate-inputs")
    prepare("stickers", DataConfig(), output_dir=str(root), progress=False)
    prepared = load_prepared(root / "data")
    lines = []
    for s in prepared.samples:
        items = prepared.items
        preference = sorted({items[h].title.split()[0] for h in s.history} | {items[h].category for h in s.history})
        lines.append(json.dumps({"id": s.id, "user_id": s.user_id, "target": s.target, "status": "ok",
                                 "preference_keywords": preference[:8],
                                 "target_keywords": [items[s.target].title, items[s.target].category]}))
    (root / "keywords").mkdir()
    (root / "keywords" / "keywords.jsonl").write_text("\n".join(lines) + "\n")
    return root


def run_stage(gen_cfg, runtime, stage_inputs, out, models, **changes):
    return generate(gen_cfg, gen_settings(**changes), runtime, data_dir=stage_inputs / "data",
                    keywords_path=stage_inputs / "keywords" / "keywords.jsonl", out_dir=out, models=models,
                    progress=False)


def test_outputs_manifest_and_contact_sheets(tmp_path, gen_cfg, runtime, stage_inputs, models):
    out = tmp_path / "generate"
    result = run_stage(gen_cfg, runtime, stage_inputs, out, models, max_samples=2)
    assert result.generated == ["u001:2", "u002:2"] and result.skipped == 0
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    first = records[0]
    assert sorted(first) == ["candidates", "chosen", "contact_sheet", "image", "index", "preference_text", "sample",
                             "soft", "split", "target", "target_text", "user_id", "weighting"]
    assert first["sample"] == "u001:2" and first["split"] == "test" and first["soft"] is False
    assert [c["weights"] for c in first["candidates"]] == [[1.0, 1.0], [1.0, 2.0], [2.0, 1.0]]
    assert [c["seed"] for c in first["candidates"]] == [[42, first["index"], k, 0] for k in range(3)]
    assert sorted(first["candidates"][0]) == ["chosen", "d_p", "d_t", "image", "k", "m", "seed", "weights", "z"]
    d_p, d_t = [c["d_p"] for c in first["candidates"]], [c["d_t"] for c in first["candidates"]]
    assert first["chosen"] == select(d_p, d_t).chosen
    assert [c["chosen"] for c in first["candidates"]] == [i == first["chosen"] for i in range(3)]
    for c in first["candidates"]:
        expected = 0.5 * np.log(max(c["d_p"], 1e-6)) + 0.5 * np.log(max(c["d_t"], 1e-6))
        assert c["z"] == pytest.approx(expected, abs=1e-12)
    assert first["image"] == "images/u001%3A2/" + f"{first['chosen']}_0.png"
    # the images on disk are the pipeline's output for those seeds and contexts, in the run's UNet calls
    # (micro_batch 4: the two samples' 6 candidates share calls of 4)
    pipeline = models.pipeline
    blocks = [(candidate_contexts(models.encode, r["target_text"], r["preference_text"], None,
                                  [[1, 1], [1, 2], [2, 1]], "scaling"),
               pipeline.initial_latents([tuple(c["seed"]) for c in r["candidates"]])) for r in records]
    uncond = unconditional_context(models.encode, gen_settings().negative_for("stickers"))
    for record, images in zip(records, pipeline.stream(blocks, uncond, 4)):
        for c, image in zip(record["candidates"], to_uint8(images)):
            np.testing.assert_array_equal(np.asarray(Image.open(out / c["image"])), image)
    sheet = Image.open(out / first["contact_sheet"])
    assert sheet.size[0] > 8 * outputs.SHEET_TILE and sheet.mode == "RGB"  # 5 history + 3 candidates + chosen
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 2 and summary["candidates"] == 6 and sum(summary["picks_per_weight_set"].values()) == 2
    assert [p.name for p in out.rglob(".*")] == [".pmg-owned"], "temporary files left behind"  # only the marker


def test_without_preference_keywords_candidates_are_ranked_by_accuracy_alone(tmp_path, gen_cfg, runtime,
                                                                            stage_inputs, models):
    """The baselines (no personalization, soft only) must not use the preference keywords to pick either."""
    out = tmp_path / "generate"
    run_stage(gen_cfg, runtime, stage_inputs, out, models, max_samples=2, preference_keywords=False, a=0.7)
    assert json.loads((out / "settings.json").read_text())["a"] == 0.0
    for record in (json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()):
        d_t = [c["d_t"] for c in record["candidates"]]
        assert record["chosen"] == int(np.argmax(d_t))
        for c in record["candidates"]:
            assert c["z"] == pytest.approx(np.log(max(c["d_t"], 1e-6)), abs=1e-12)
    # with the preference keywords, the same a weighs d_p in
    pmg = tmp_path / "pmg"
    run_stage(gen_cfg, runtime, stage_inputs, pmg, models, max_samples=2, a=0.7)
    assert json.loads((pmg / "settings.json").read_text())["a"] == 0.7
    record = json.loads((pmg / "manifest.jsonl").read_text().splitlines()[0])
    c = record["candidates"][0]
    assert c["z"] == pytest.approx(0.7 * np.log(max(c["d_p"], 1e-6)) + 0.3 * np.log(max(c["d_t"], 1e-6)), abs=1e-12)


def test_resume_skips_finished_samples_and_drops_a_torn_line(tmp_path, gen_cfg, runtime, stage_inputs, models):
    out = tmp_path / "generate"
    run_stage(gen_cfg, runtime, stage_inputs, out, models, max_samples=2)
    manifest = out / "manifest.jsonl"
    complete = manifest.read_bytes()
    lines = complete.splitlines(keepends=True)
    # killed while appending the second sample, which shares a UNet call with the first (calls of 4 candidates):
    # the resumed run redoes that call whole, so the second sample comes out exactly as before
    manifest.write_bytes(lines[0] + lines[1][: len(lines[1]) // 2])

    def no_build(*args):
        raise AssertionError("models were built although nothing was left to generate")

    result = run_stage(gen_cfg, runtime, stage_inputs, out, models, max_samples=2)
    assert result.generated == ["u002:2"] and result.skipped == 1
    assert manifest.read_bytes() == complete  # same line again: generation is deterministic
    done = generate(gen_cfg, gen_settings(max_samples=2), runtime, data_dir=stage_inputs / "data",
                    keywords_path=stage_inputs / "keywords" / "keywords.jsonl", out_dir=out, build=no_build,
                    progress=False)
    assert done.generated == [] and done.skipped == 2 and done.summary["samples"] == 2
    # more samples later: only the new one runs
    more = run_stage(gen_cfg, runtime, stage_inputs, out, models, max_samples=3)
    assert more.generated == ["u003:2"] and len(manifest.read_text().splitlines()) == 3
    with pytest.raises(outputs.ManifestError, match="other settings \\(a: 0.5 there, 0.7 now\\)"):
        run_stage(gen_cfg, runtime, stage_inputs, out, models, max_samples=3, a=0.7)
    manifest.write_bytes(b"not json\n" + complete)
    with pytest.raises(outputs.ManifestError, match="manifest.jsonl:1: not a manifest record"):
        run_stage(gen_cfg, runtime, stage_inputs, out, models, max_samples=3)


def test_samples_share_unet_calls_with_the_same_results(tmp_path, gen_cfg, runtime, stage_inputs, models,
                                                        monkeypatch):
    """micro_batch 8 over 3 samples of 3 candidates (calls [3 + 3 + 2], [1 + 7 padding]) gives the manifest and
    images of micro_batch 3 (one sample per call), up to float noise of batching."""
    pipeline, calls = models.pipeline, []
    sample = pipeline._sample
    monkeypatch.setattr(pipeline, "_sample", lambda c, u, x: calls.append(len(c)) or sample(c, u, x))
    runs = {}
    for micro_batch in (3, 8):
        calls.clear()
        monkeypatch.setattr(pipeline, "micro_batch", micro_batch)
        out = tmp_path / f"mb{micro_batch}"
        result = run_stage(gen_cfg, runtime, stage_inputs, out, models, max_samples=3, micro_batch=micro_batch)
        assert result.generated == ["u001:2", "u002:2", "u003:2"]
        runs[micro_batch] = out, list(calls)
    assert runs[3][1] == [3, 3, 3] and runs[8][1] == [8, 8]
    (alone, _), (shared, _) = runs[3], runs[8]
    records = [[json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
               for out in (alone, shared)]
    assert [r["sample"] for r in records[1]] == ["u001:2", "u002:2", "u003:2"]
    scores = ("d_p", "d_t", "z")
    worst = 0
    for a, b in zip(*records):
        assert a["candidates"] and len(a["candidates"]) == len(b["candidates"]) == 3
        assert {k: v for k, v in a.items() if k != "candidates"} == {k: v for k, v in b.items() if k != "candidates"}
        for ca, cb in zip(a["candidates"], b["candidates"]):
            assert {k: v for k, v in ca.items() if k not in scores} == {k: v for k, v in cb.items() if k not in scores}
            assert [cb["d_p"], cb["d_t"]] == pytest.approx([ca["d_p"], ca["d_t"]], abs=1e-4)
            # z is log-scaled (a cosine of 0.07 turns 2e-5 of batching noise into 1.4e-4): checked against the
            # candidate's own cosines instead of across runs
            assert cb["z"] == pytest.approx(0.5 * np.log(max(cb["d_p"], 1e-6)) + 0.5 * np.log(max(cb["d_t"], 1e-6)),
                                            abs=1e-12)
            pa, pb = (np.asarray(Image.open(out / ca["image"]), np.int16) for out in (alone, shared))
            worst = max(worst, np.abs(pa - pb).max())
    assert worst <= 1  # uint8 rounding of images equal within 1e-5
    print(f"micro_batch 8 vs 3: max uint8 difference {worst}")


def write_soft_checkpoint(cfg, folder: Path, seed: int, drop: str = "") -> Path:
    """A ``soft_preference.ckpt`` as training writes it (trainable parameters, names relative to the encoder),
    with random values; the encoder is built around an empty stand-in for the LLM (its weights are not saved)."""
    from mindspore import nn

    from research.pmg.models.soft_preference import SoftPreferenceEncoder

    encoder = SoftPreferenceEncoder(nn.Cell(), cfg.models.llm, cfg.models.soft_preference, 32)
    rng = np.random.default_rng(seed)
    params = [{"name": n, "data": ms.Tensor(rng.normal(0, 0.5, p.shape).astype(np.float32))}
              for n, p in encoder.parameters_and_names() if p.requires_grad and n != drop]
    folder.mkdir(parents=True)
    ms.save_checkpoint(params, str(folder / "soft_preference.ckpt"))
    (folder / "meta.json").write_text('{"step": 2}')
    return folder / "soft_preference.ckpt"


def test_soft_preference_checkpoint_loads_strictly_and_conditions(tmp_path, gen_cfg, runtime, stage_inputs, models):
    from research.pmg.models.soft_preference import load_soft_checkpoint, resolve_soft_checkpoint
    from research.pmg.models.weights import CheckpointError
    from research.pmg.errors import PMGError

    train_out = tmp_path / "train"
    old = write_soft_checkpoint(gen_cfg, train_out / "checkpoints" / "step-000001", seed=1)
    newest = write_soft_checkpoint(gen_cfg, train_out / "checkpoints" / "step-000002", seed=2)
    assert resolve_soft_checkpoint(train_out) == newest == resolve_soft_checkpoint(newest.parent)
    assert resolve_soft_checkpoint(old) == old
    with pytest.raises(PMGError, match="no soft_preference.ckpt"):
        resolve_soft_checkpoint(tmp_path)

    built = build_models(gen_cfg, gen_settings(soft_checkpoint=str(train_out)), runtime)
    soft = built.soft
    saved = ms.load_checkpoint(str(newest))
    params = dict(soft.encoder.parameters_and_names())
    for name, value in saved.items():  # every trained parameter came from the file
        np.testing.assert_array_equal(params[name].asnumpy(), value.asnumpy())
    assert isinstance(built.pipeline.scheduler, type(models.pipeline.scheduler)) and built.pipeline.steps == STEPS

    from research.pmg.examples import render_history_prompt

    prompt = render_history_prompt(["snowman", "grinning cat face"])
    e_m = soft(prompt)
    assert e_m.shape == (4, 32) and np.all(np.isfinite(e_m))
    params["mm_tokens"].set_data(params["mm_tokens"] + 1.0)
    assert np.abs(soft(prompt) - e_m).max() > 1e-3  # E_m comes from the trained tokens

    missing = write_soft_checkpoint(gen_cfg, tmp_path / "bad", seed=3, drop="to_context.bias")
    with pytest.raises(CheckpointError, match="missing \\(1\\): to_context.bias"):
        load_soft_checkpoint(soft.encoder, missing)

    # the stage with the soft embedding: context target | preference | E_m, unconditional soft slots zero
    with_soft = GenerationModels(pipeline=models.pipeline, scorer=models.scorer, encode=models.encode, soft=soft)
    out = tmp_path / "generate"
    result = run_stage(gen_cfg, runtime, stage_inputs, out, with_soft, max_samples=1,
                       soft_checkpoint=str(train_out))
    record = json.loads((out / "manifest.jsonl").read_text())
    assert result.generated == ["u001:2"] and record["soft"] is True
    settings = json.loads((out / "settings.json").read_text())
    assert settings["soft_checkpoint"] == str(newest.resolve()) and settings["models"]["llm"]["num_layers"] == 2


def test_command_line(tmp_path, gen_cfg, stage_inputs, models, monkeypatch, capsys):
    import shutil

    from research.pmg.generate import run as run_module
    from research.pmg.generate.__main__ import main

    for name in ("data", "keywords"):
        shutil.copytree(stage_inputs / name, tmp_path / name)
    monkeypatch.setattr(run_module, "build_models", lambda *args: models)  # the module's compiled models
    argv = ["--config", str(TINY_CONFIG), "--set", f"runtime.output_dir={tmp_path}", "--set", f"generate.steps={STEPS}",
            "--set", "generate.scheduler=ddim", "--set", "generate.micro_batch=4", "--set", "generate.max_samples=1",
            "--no-progress"]
    assert run(main, argv) == 0
    out = capsys.readouterr().out
    manifest = tmp_path / "generate" / "manifest.jsonl"
    assert out.startswith(f"generate: 1 samples generated, 0 already done -> {manifest}")
    assert "picks per (w_p,w_t): (1,1)" in out
    assert run(main, argv) == 0
    assert "0 samples generated, 1 already done" in capsys.readouterr().out

    for bad, message in [(["--set", "generate.a=1.5"], "generate.a: must be in [0, 1]"),
                         (["--set", "generate.weight_sets=[[1,x]]"], "field 'generate.weight_sets[0][1]' must be a "
                                                                      "number, got 'x'"),
                         (["--set", "generate.weighting=repetition", "--set", "generate.weight_sets=[[1,1.5]]"],
                          "must be whole numbers"),
                         (["--keywords", str(tmp_path / "absent.jsonl")], "keywords file not found"),
                         (["--set", "generate.splits=[test]", "--data", str(tmp_path / "nodata")],
                          "not a prepared dataset")]:
        assert run(main, argv + bad + ["--out", str(tmp_path / "other")]) == USER_ERROR_EXIT, bad
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "other").exists()  # failed runs write nothing


def test_generate_config_validation():
    GenerateConfig().validate("generate.")
    assert GenerateConfig().num_candidates == 3
    assert GenerateConfig().negative_for("movielens") == "broken text, unclear, twisted"
    assert GenerateConfig(negative_prompt="").negative_for("movielens") == ""
    for changes, message in [({"weight_sets": []}, "at least one"), ({"weight_sets": [[1, 2, 3]]}, "a pair"),
                             ({"weight_sets": [[0, 0]]}, "not both 0"),
                             ({"weight_sets": [[1, 1], [1.0, 1.0]]}, "twice"),
                             ({"weighting": "repetition", "weight_sets": [[1, 0.5]]}, "whole numbers"),
                             ({"guidance": 0.5}, "guidance"), ({"a": -0.1}, "generate.a"), ({"splits": ["dev"]}, "dev"),
                             ({"micro_batch": 0}, "micro_batch"), ({"steps": 0}, "steps")]:
        with pytest.raises(ConfigError, match=message):
            GenerateConfig(**changes).validate("generate.")


# ---------------------------------------------------------------------------------------------------------------------
# Long keyword texts: chunked (generate.long_prompts: chunk), checked against transformers' CLIPTextModel
# ---------------------------------------------------------------------------------------------------------------------
WINDOW, CHUNKS = 16, 3  # a text-encoder window of 16 tokens (BOS + 14 + EOS), three windows per group


@pytest.fixture(scope="module")
def chunk_encoders(runtime, tiny_tokenizers):
    """A tiny CLIP text encoder in MindSpore and the same weights in PyTorch (transformers), and a tokenizer that
    pads with "!" (id 0), as SD 2.x's does, so padding, BOS and EOS are three different tokens."""
    import torch
    from mindone.transformers import CLIPTextModel
    from transformers import CLIPTextConfig
    from transformers import CLIPTextModel as TorchCLIPTextModel

    from research.pmg.models.tokenizers import load_clip_tokenizer

    arch = dict(vocab_size=1000, bos_token_id=998, eos_token_id=999, hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=WINDOW)
    torch.manual_seed(0)
    reference = TorchCLIPTextModel(CLIPTextConfig(**arch)).eval()
    with torch.no_grad():  # random-init norms are ones and zeros: perturb them so a mapping slip would show
        for name, param in reference.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    model = CLIPTextModel(CLIPTextConfig(**arch))
    weights = {name: value.numpy() for name, value in reference.state_dict().items()}
    renamed = {".embedding_table": ".weight", ".gamma": ".weight", ".beta": ".bias"}  # MindSpore's parameter names
    for name, param in model.parameters_and_names():
        source = next((name[:-len(a)] + b for a, b in renamed.items() if name.endswith(a)), name)
        param.set_data(ms.Tensor(weights.pop(source)))
    assert not [k for k in weights if not k.endswith("position_ids")], weights.keys()
    tokenizer = load_clip_tokenizer(tiny_tokenizers.diffusion, WINDOW)
    tokenizer.pad_token = "!"
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (998, 999, 0)
    return model, reference, tokenizer


def _one_token_words(tokenizer, n: int) -> list[str]:
    """``n`` words of the vocabulary that are one token each (so a text of k of them is k tokens)."""
    words = [w[:-4] for w, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
             if w.endswith("</w>") and w[:-4].isalpha() and len(w) > 6]
    words = [w for w in words if len(tokenizer(w, add_special_tokens=False).input_ids) == 1]
    assert len(words) >= n
    return words[:n]


def _reference_windows(tokenizer, text: str, chunks: int) -> list[list[int]]:
    """The official demo's layout of ``text`` (MindONE utils/long_prompt.py), written out independently: the text's
    tokens in pieces of WINDOW - 2, each as BOS + piece + EOS + padding; windows past the text are the empty
    prompt's (BOS, EOS, padding); pieces past ``chunks`` windows are dropped."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    body = WINDOW - 2
    pieces = [ids[i:i + body] for i in range(0, len(ids), body)] or [[]]
    pieces = (pieces + [[]] * chunks)[:chunks]
    return [tokenizer.build_inputs_with_special_tokens(p) + [tokenizer.pad_token_id] * (body - len(p)) for p in pieces]


def test_chunked_keyword_texts_match_transformers_window_by_window(chunk_encoders):
    """Every window of a chunked text is the reference layout and encodes as transformers' CLIPTextModel does, the
    windows laid end to end: texts of 0, 5, 14 (one full window), 15, 28 (two full), 40 and 50 (past three windows,
    cut at 42) tokens."""
    import torch

    from research.pmg.models.conditioning import chunk_token_ids, encode_texts

    model, reference, tokenizer = chunk_encoders
    words = _one_token_words(tokenizer, 50)
    texts = [" ".join(words[:n]) for n in (0, 5, 14, 15, 28, 40, 50)]
    windows = [_reference_windows(tokenizer, t, CHUNKS) for t in texts]
    assert [sum(w != windows[0][0] for w in ws) for ws in windows] == [0, 1, 1, 2, 2, 3, 3]  # windows in use
    np.testing.assert_array_equal(chunk_token_ids(tokenizer, texts, WINDOW, CHUNKS), np.array(windows))
    got = encode_texts(model, tokenizer, texts, WINDOW, batch_size=4, chunks=CHUNKS)
    with torch.no_grad():
        expected = reference(torch.tensor(windows).reshape(-1, WINDOW)).last_hidden_state.numpy()
    expected = expected.reshape(len(texts), CHUNKS * WINDOW, -1)
    assert got.shape == expected.shape == (7, CHUNKS * WINDOW, 32) and got.dtype == np.float32
    assert np.abs(got - expected).max() < 1e-5, np.abs(got - expected).max()


def test_a_text_longer_than_one_window_is_no_longer_cut(chunk_encoders):
    """Two texts that differ only in their last keyword, past the first window: cut, they encode the same (the
    keyword never reaches the context); chunked, the window holding it differs and the others do not. Through the
    candidates' conditioning, repetition weights w_p = 2 and 3 give the same preference group when cut (the third
    repeat is lost) and different ones when chunked."""
    from research.pmg.models.conditioning import encode_texts

    model, _, tokenizer = chunk_encoders
    words = _one_token_words(tokenizer, 32)
    head = " ".join(words[:30])  # 30 tokens: windows 1 and 2 full, the last keyword opens window 3
    cut = encode_texts(model, tokenizer, [head + " " + words[30], head + " " + words[31]], WINDOW)
    assert cut.shape == (2, WINDOW, 32) and np.array_equal(cut[0], cut[1])
    chunked = encode_texts(model, tokenizer, [head + " " + words[30], head + " " + words[31]], WINDOW, chunks=CHUNKS)
    np.testing.assert_allclose(chunked[0, :2 * WINDOW], chunked[1, :2 * WINDOW], atol=1e-6)
    assert np.abs(chunked[0, 2 * WINDOW:] - chunked[1, 2 * WINDOW:]).max() > 1e-2

    preference = " ".join(words[:10])  # 10 tokens: twice (with ", ") fills more than one window
    for chunks, same in ((0, True), (CHUNKS, False)):
        encode = lambda texts, c=chunks: encode_texts(model, tokenizer, texts, WINDOW, chunks=c)  # noqa: E731
        ctx = candidate_contexts(encode, "poster", preference, None, [[1, 1], [2, 1], [3, 1]], "repetition")
        group = WINDOW * (chunks or 1)
        assert ctx.shape == (3, 2 * group, 32)
        twice, thrice = ctx[1, group:], ctx[2, group:]
        assert np.array_equal(twice, thrice) == same, chunks
        np.testing.assert_allclose(ctx[1, group:], encode([repeated(preference, 2)])[0], atol=1e-6)


def test_a_short_text_chunked_is_its_cut_encoding_then_empty_windows(chunk_encoders):
    """A text that fits one window: its first window is exactly the one-window (cut) encoding, the others are the
    empty prompt's; one window of chunks is the cut encoding. The unconditional branch is laid out the same way."""
    from research.pmg.models.conditioning import encode_texts

    model, _, tokenizer = chunk_encoders
    texts = ["cat, frog, cartoon", ""]
    cut = encode_texts(model, tokenizer, texts, WINDOW)
    chunked = encode_texts(model, tokenizer, texts, WINDOW, chunks=CHUNKS)
    np.testing.assert_allclose(chunked[0, :WINDOW], cut[0], atol=1e-6)
    for c in range(1, CHUNKS):
        np.testing.assert_allclose(chunked[0, c * WINDOW:(c + 1) * WINDOW], cut[1], atol=1e-6)
    np.testing.assert_allclose(encode_texts(model, tokenizer, texts, WINDOW, chunks=1), cut, atol=1e-6)

    encode = lambda texts: encode_texts(model, tokenizer, texts, WINDOW, chunks=CHUNKS)  # noqa: E731
    soft = np.ones((4, 32), np.float32)
    cond = candidate_contexts(encode, "poster", "cat, frog", soft, [[1, 1], [2, 1]], "repetition")
    uncond = unconditional_context(encode, "blurry", soft_len=4)
    assert cond.shape == (2, 2 * CHUNKS * WINDOW + 4, 32) and uncond.shape == cond.shape[1:]
    negative = encode(["blurry"])[0]
    np.testing.assert_allclose(uncond[:CHUNKS * WINDOW], negative, atol=1e-6)
    np.testing.assert_allclose(uncond[CHUNKS * WINDOW:2 * CHUNKS * WINDOW], negative, atol=1e-6)
    np.testing.assert_allclose(negative[WINDOW:2 * WINDOW], cut[1], atol=1e-6)  # the negative's empty windows
    assert not uncond[2 * CHUNKS * WINDOW:].any()


def test_long_prompt_settings(tmp_path):
    assert GenerateConfig().long_prompts == "cut" and GenerateConfig().text_chunks == 0  # the default: one window
    assert GenerateConfig(long_prompts="chunk", max_chunks=2).text_chunks == 2
    for changes, message in [({"max_chunks": 0}, r"generate\.max_chunks: must be in \[1, 64\]"),
                             ({"max_chunks": 65}, r"generate\.max_chunks: must be in \[1, 64\]")]:
        with pytest.raises(ConfigError, match=message):
            GenerateConfig(**changes).validate("generate.")
    with pytest.raises(ConfigError, match="generate.long_prompts"):
        tiny_config(tmp_path, "generate.long_prompts=split")
