"""Evaluation maths without models: SSIM against scikit-image, bootstrap and paired statistics, settings, inputs,
and known answers for the per-sample scores (history means, which keywords each CLIP text score reads) with
hand-made embeddings and a NumPy distance standing in for CLIP and LPIPS."""
import json

import numpy as np
import pytest
from PIL import Image
from skimage import data as photos
from skimage.metrics import structural_similarity

from research.pmg import images as im
from research.pmg.config import ConfigError
from research.pmg.config.evaluate import EvaluateConfig, MethodConfig, sweep_methods
from research.pmg.evaluate.methods import MethodImagesError, read_images
from research.pmg.evaluate.ssim import SETTINGS, SSIMSettings, ssim
from research.pmg.evaluate.stats import bootstrap_ci, paired_comparison, sign_flip_p_value

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


@pytest.fixture(scope="module")
def real_photos():
    """Real photographs shipped with scikit-image, brought to 128 px by the evaluation's resize policy."""
    return np.stack([im.fit(Image.fromarray(getattr(photos, name)()), 128, "center_crop") for name in PHOTOS])


def skimage_ssim(a, b, sigma=1.5):
    return structural_similarity(a, b, gaussian_weights=True, sigma=sigma, use_sample_covariance=False,
                                 data_range=255, channel_axis=-1)


def test_ssim_equals_skimage_on_real_photos(real_photos):
    a, b = real_photos, np.roll(real_photos, 1, axis=0)  # every photo against another one
    noisy = np.clip(a + np.random.default_rng(0).normal(0, 25, a.shape), 0, 255).astype(np.uint8)
    for x, y in ((a, b), (a, noisy)):
        ours = ssim(x, y)
        reference = np.array([skimage_ssim(p, q) for p, q in zip(x, y)])
        assert np.abs(ours - reference).max() < 1e-6
    assert ssim(a[0], noisy[0]) == pytest.approx(skimage_ssim(a[0], noisy[0]), abs=1e-6)
    wide = SSIMSettings(sigma=3.0)
    assert ssim(a[:2], noisy[:2], wide) == pytest.approx([skimage_ssim(p, q, 3.0) for p, q in zip(a, noisy)][:2],
                                                         abs=1e-6)


def test_ssim_identity_symmetry_and_settings(real_photos):
    np.testing.assert_array_equal(ssim(real_photos, real_photos), np.ones(len(real_photos)))
    b = np.roll(real_photos, 2, axis=0)
    np.testing.assert_allclose(ssim(real_photos, b), ssim(b, real_photos), rtol=0, atol=1e-12)
    assert SETTINGS.win_size == 11 and not SETTINGS.use_sample_covariance and SETTINGS.data_range == 255
    recorded = SETTINGS.to_dict()
    assert recorded["sigma"] == 1.5 and recorded["gaussian_weights"] and "use_sample_covariance=False" in \
        recorded["reference"]
    with pytest.raises(ValueError, match="one size"):
        ssim(real_photos[:, :64], real_photos)
    with pytest.raises(ValueError, match="smaller than the 11x11"):
        ssim(real_photos[:, :8, :8], real_photos[:, :8, :8])


def test_images_resize_policies_and_transparency(tmp_path):
    img = Image.new("RGBA", (60, 30), (10, 200, 10, 0))  # fully transparent green: must come out white
    img.paste((255, 0, 0, 255), (25, 0, 35, 30))
    img.save(tmp_path / "a.png")
    rgb = im.load_rgb(tmp_path / "a.png")
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (255, 255, 255) and rgb.getpixel((30, 10)) == (255, 0, 0)
    crop, squash = im.fit(rgb, 32, "center_crop"), im.fit(rgb, 32, "squash")
    assert crop.shape == squash.shape == (32, 32, 3) and crop.dtype == np.uint8
    red = lambda a: np.mean((a[..., 0] > 200) & (a[..., 1] < 60))  # noqa: E731
    assert red(crop) == pytest.approx(1 / 3, abs=0.05) and red(squash) == pytest.approx(1 / 6, abs=0.05)
    signed = im.to_signed(crop[None])
    assert signed.shape == (1, 3, 32, 32) and signed.min() >= -1 and signed.max() <= 1
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(Exception, match="bad.png: cannot read image"):
        im.load_rgb(tmp_path / "bad.png")


def test_bootstrap_interval_contains_the_mean_and_is_seeded():
    rng = np.random.default_rng(1)
    for values in (rng.normal(0.4, 0.1, 50), rng.exponential(1.0, 12), rng.uniform(0, 1, 500), [0.3, 0.9]):
        interval = bootstrap_ci(values, samples=2000, seed=3)
        assert interval.low <= interval.mean <= interval.high
        assert interval.mean == pytest.approx(np.mean(values))
        assert interval == bootstrap_ci(values, samples=2000, seed=3)
    wide, narrow = bootstrap_ci(rng.normal(0, 1, 20)), bootstrap_ci(rng.normal(0, 1, 2000))
    assert narrow.high - narrow.low < wide.high - wide.low
    with_nan = bootstrap_ci([1.0, np.nan, 3.0], samples=500)
    assert with_nan.n == 2 and with_nan.mean == 2.0
    assert bootstrap_ci([]).n == 0 and np.isnan(bootstrap_ci([]).mean)
    assert bootstrap_ci([5.0, 5.0]).low == bootstrap_ci([5.0, 5.0]).high == 5.0


def test_paired_comparison_detects_a_planted_difference_and_not_a_null_one():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.8, 60)  # per-sample difficulty, shared by both methods
    planted = paired_comparison(base + 0.02 + rng.normal(0, 0.02, 60), base, samples=2000, permutations=4000)
    assert planted.p_value < 0.001 and planted.low > 0 and planted.diff == pytest.approx(0.02, abs=0.01)
    null = paired_comparison(base + rng.normal(0, 0.02, 60), base, samples=2000, permutations=4000)
    assert null.p_value > 0.05 and null.low < 0 < null.high
    # Calibrated: on 200 null data sets about 5 % are rejected at 0.05.
    rejected = sum(sign_flip_p_value(rng.normal(0, 1, 25), permutations=1000, seed=s)[0] < 0.05 for s in range(200))
    assert 2 <= rejected <= 20


def test_sign_flip_is_exact_for_small_samples():
    p, exact = sign_flip_p_value([1.0, 2.0, 3.0], permutations=100)
    assert exact and p == pytest.approx(2 / 8)  # only all-plus and all-minus are as extreme
    p, exact = sign_flip_p_value([0.0, 0.0, 0.0, 0.0])
    assert exact and p == 1.0
    result = paired_comparison([1, 2, np.nan, 4], [0, 1, 1, 3], permutations=100)
    assert result.n == 3 and result.exact and result.diff == 1.0


def test_config_validation_names_the_field():
    assert [m.name for m in EvaluateConfig().all_methods()] == ["pmg"]
    EvaluateConfig().validate("evaluate.")  # the defaults load in every stage's config ...
    with pytest.raises(ConfigError, match="evaluate.lpips_weights: needed when metrics include lpips"):
        EvaluateConfig().check_inputs("evaluate.")  # ... but evaluating LPIPS needs the weights
    EvaluateConfig(metrics=["ssim", "clip"]).check_inputs("evaluate.")
    for bad, message in (
            (dict(metrics=["ssim", "fid"]), "'fid' is not one of"),
            (dict(metrics=["ssim"], image_size=16), "image_size: must be >= 32"),
            (dict(metrics=["ssim"], baseline="none"), "baseline: 'none' is not one of the methods"),
            (dict(metrics=["ssim"], methods=[MethodConfig("a"), MethodConfig("a")]), "'a' is used twice"),
            (dict(metrics=["ssim"], confidence=1.0), "confidence: must be in"),
            (dict(metrics=["ssim"], sweep={"generate.a": 0.5}), "sweep.generate.a: must be a non-empty list")):
        with pytest.raises(ConfigError, match=message):
            EvaluateConfig(**bad).validate("evaluate.")
    with pytest.raises(ConfigError, match="name: 'a b' must be"):
        MethodConfig("a b").validate("m.")
    with pytest.raises(ConfigError, match="must not set runtime.output_dir"):
        MethodConfig("x", overrides=["runtime.output_dir=/tmp"]).validate("m.")
    with pytest.raises(ConfigError, match="evaluate.run_overrides: 'oops' is not key.path=value"):
        EvaluateConfig(run_overrides=["oops"]).validate("evaluate.")


def test_sweep_expands_into_single_override_methods():
    methods = sweep_methods({"models.soft_preference.prefix_len": [2, 8], "generate.weight_sets": [[[1, 2], [2, 3]]],
                             "generate.mode": ["fast"]})
    assert [m.name for m in methods] == ["prefix_len=2", "prefix_len=8", "weight_sets=_1_2_2_3", "mode=fast"]
    assert methods[0].overrides == ["models.soft_preference.prefix_len=2"] and methods[0].trains
    assert methods[2].overrides == ['generate.weight_sets=[[1,2],[2,3]]'] and not methods[2].trains
    assert methods[3].overrides == ['generate.mode="fast"']
    cfg = EvaluateConfig(metrics=["ssim"], sweep={"train.lr": [1e-4]})
    assert [m.name for m in cfg.all_methods()] == ["pmg", "lr=0.0001"]


def test_method_images_from_folder_and_manifests(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("u1:0.png", "u2:0.jpg", "notes.txt"):
        (folder / name).write_bytes(b"x")
    assert read_images(folder) == {"u1:0": folder / "u1:0.png", "u2:0": folder / "u2:0.jpg"}

    (tmp_path / "gen").mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / "gen" / name).write_bytes(b"x")
    records = tmp_path / "manifest.jsonl"  # the generation stage's: one record per sample, "image" is the chosen one
    candidates = [{"k": 0, "m": 0, "weights": [1.0, 2.0], "seed": [42, 0, 0, 0], "image": "gen/a.png", "d_p": 0.3,
                   "d_t": 0.4, "z": -1.0, "chosen": False},
                  {"k": 1, "m": 0, "weights": [2.0, 1.0], "seed": [42, 0, 1, 0], "image": "gen/b.png", "d_p": 0.4,
                   "d_t": 0.4, "z": -0.9, "chosen": True}]
    lines = [{"sample": "u1:0", "index": 0, "user_id": "u1", "target": "t", "split": "test", "chosen": 1,
              "image": "gen/b.png", "contact_sheet": None, "candidates": candidates},
             {"sample": "u2:0", "index": 1, "user_id": "u2", "target": "t", "split": "test", "chosen": 0,
              "image": str(tmp_path / "gen" / "c.png"), "contact_sheet": None, "candidates": []}]
    records.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert read_images(records) == {"u1:0": tmp_path / "gen" / "b.png", "u2:0": tmp_path / "gen" / "c.png"}
    per_candidate = tmp_path / "candidates.jsonl"  # or every candidate on a line of its own, one chosen per sample
    per_candidate.write_text("".join(json.dumps({"sample": "u1:0", **c}) + "\n" for c in candidates))
    assert read_images(per_candidate) == {"u1:0": tmp_path / "gen" / "b.png"}

    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"sample": "u1:0", "image": "gen/a.png"}\n\n')
    assert read_images(plain) == {"u1:0": tmp_path / "gen" / "a.png"}
    for text, message in (('{"sample": "u1:0"}\n', "plain.jsonl:1: expected an object"),
                          ('{"sample": "u1:0", "image": "gen/zz.png"}\n', "zz.png not found"),
                          ('{"sample": "u1:0", "image": "gen/a.png"}\n{"sample": "u1:0", "image": "gen/b.png"}\n',
                           "plain.jsonl:2: sample 'u1:0' has a second image line"),
                          ('{"sample": "u1:0", "image": "gen/a.png", "chosen": "yes"}\n', "field 'chosen' must be"),
                          ("{oops\n", "plain.jsonl:1: not valid JSON")):
        plain.write_text(text)
        with pytest.raises(MethodImagesError, match=message):
            read_images(plain)
    with pytest.raises(MethodImagesError, match="no such folder or manifest"):
        read_images(tmp_path / "absent")


# ---------------------------------------------------------------------------------------------------------------------
# Known answers: history scores are means over the history, each CLIP text score reads its own keywords
# ---------------------------------------------------------------------------------------------------------------------
def _unit(*xs):
    v = np.asarray(xs, np.float64)
    return v / np.linalg.norm(v)


# Hand-made unit CLIP embeddings (4-d): cosines with a generated image are exact decimals, and for every sample the
# mean over the history differs from its first, last and largest element, and the two keyword texts differ.
GENERATED = {"s1": _unit(1, 0, 0, 0), "s2": _unit(0, 1, 0, 0), "s3": _unit(0, 0, 1, 0)}
ITEM_EMBEDDINGS = {"h1": _unit(1, 0, 0, 0), "h2": _unit(0.6, 0.8, 0, 0), "h3": _unit(0, 1, 0, 0),
                   "h4": _unit(0, 0.6, 0.8, 0), "h5": _unit(0, -0.28, 0, 0.96), "h6": _unit(0, 0, 0.8, 0.6),
                   "t1": _unit(0.8, 0, 0.6, 0), "t2": _unit(0, 0.96, 0, 0.28), "t3": _unit(0, 0, 0.6, 0.8)}
HISTORIES = {"s1": ("h1", "h2", "h3"), "s2": ("h4", "h5"), "s3": ("h1", "h6", "h2", "h5", "h4")}
TARGETS = {"s1": "t1", "s2": "t2", "s3": "t3"}
KEYWORDS = {"s1": (["cat", "heart"], ["dog"]), "s2": (["pizza"], ["rain", "cloud"]), "s3": (["sun"], ["leaf"])}
TEXT_EMBEDDINGS = {"cat, heart": _unit(0.28, 0, 0, 0.96), "dog": _unit(-0.6, 0.8, 0, 0),
                   "pizza": _unit(0.8, 0.6, 0, 0), "rain, cloud": _unit(0, -0.8, 0.6, 0),
                   "sun": _unit(0, 0, -0.28, 0.96), "leaf": _unit(0, 0, 0.96, 0.28)}
# The answers, worked out by hand from the vectors above (cosines with GENERATED, unclamped, scale 1).
CLIP_IMAGE_HISTORY = {"s1": (1 + 0.6 + 0) / 3, "s2": (0.6 - 0.28) / 2, "s3": (0 + 0.8 + 0 + 0 + 0.8) / 5}
CLIP_IMAGE_TARGET = {"s1": 0.8, "s2": 0.96, "s3": 0.6}
CLIP_TEXT_PREFERENCE = {"s1": 0.28, "s2": 0.6, "s3": -0.28}
CLIP_TEXT_TARGET = {"s1": -0.6, "s2": -0.8, "s3": 0.96}


class HandMadeClip:
    """Stands in for ClipEmbedder: the embedding of each image (by its pixels) and text is looked up."""

    def __init__(self, images: dict[bytes, np.ndarray]):
        self.by_pixels, self.texts_seen = images, []

    def images(self, images):
        return np.stack([self.by_pixels[np.asarray(img.convert("RGB")).tobytes()] for img in images])

    def texts(self, texts):
        self.texts_seen += list(texts)
        return np.stack([TEXT_EMBEDDINGS[t] for t in texts])

    def describe(self, model_path):
        return {"model": "hand-made", "image_size": 64}


class MeanAbsoluteDistance:
    """Stands in for the LPIPS model: per pair, the mean absolute difference of the [-1, 1] inputs."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, y):
        import mindspore as ms

        self.batches.append(x.shape[0])
        return ms.Tensor(np.abs(x.asnumpy() - y.asnumpy()).mean(axis=(1, 2, 3)))


@pytest.fixture(scope="module")
def known_world(tmp_path_factory):
    """Three test samples (histories of 3, 2 and 5 images) with 64 px images: each history image and target is its
    sample's generated image plus noise of its own strength, so LPIPS/SSIM differ from image to image."""
    from types import SimpleNamespace

    from research.pmg.records.samples import Item, PreparedData, Sample

    root = tmp_path_factory.mktemp("known-answers")
    (root / "images").mkdir()
    (root / "generated").mkdir()
    rng = np.random.default_rng(0)
    pixels, embeddings = {}, {}
    for sample, embedding in GENERATED.items():
        base = rng.integers(0, 256, (8, 8, 3)).repeat(8, 0).repeat(8, 1)  # blocks: structure for SSIM
        pixels[sample] = base.astype(np.uint8)
        Image.fromarray(pixels[sample]).save(root / "generated" / f"{sample}.png")
        embeddings[pixels[sample].tobytes()] = embedding
        for number, item in enumerate((*HISTORIES[sample], TARGETS[sample])):
            if item in pixels:
                continue  # h1, h2, h4 and h5 are also in s3's history: as made for their first sample
            noisy = base + rng.normal(0, 12 + 25 * number, base.shape)
            pixels[item] = np.clip(noisy, 0, 255).astype(np.uint8)
            Image.fromarray(pixels[item]).save(root / "images" / f"{item}.png")
            embeddings[pixels[item].tobytes()] = ITEM_EMBEDDINGS[item]
    items = {i: Item(id=i, title=i, image=f"images/{i}.png") for i in ITEM_EMBEDDINGS}
    samples = [Sample(id=s, user_id=f"u{s}", history=HISTORIES[s], target=TARGETS[s], split="test") for s in GENERATED]
    data = PreparedData(root=root, items=items, samples=samples, summary={})
    keywords = {s: SimpleNamespace(preference_keywords=p, target_keywords=t) for s, (p, t) in KEYWORDS.items()}
    images = {s: root / "generated" / f"{s}.png" for s in GENERATED}
    return SimpleNamespace(root=root, data=data, keywords=keywords, images=images, pixels=pixels,
                           embeddings=embeddings)


def _pair_references(world):
    """{sample: {metric: per-image values (history..., target)}}: scikit-image SSIM and the NumPy distance."""
    out = {}
    for sample in GENERATED:
        g = world.pixels[sample]
        others = [world.pixels[i] for i in (*HISTORIES[sample], TARGETS[sample])]
        out[sample] = {"ssim": np.array([skimage_ssim(g, o) for o in others]),
                       "lpips": np.array([np.abs(g / 127.5 - o / 127.5).mean() for o in others])}
    return out


def test_history_scores_are_means_and_text_scores_read_their_own_keywords(known_world, tmp_path):
    """The evaluation stage (``evaluate``: CLIP references from the keywords, pair scoring, per-sample CSV) on
    hand-made inputs with known answers: LPIPS, SSIM and CLIP-image history scores are the means over the history
    images (not the first, last or largest), target scores the target's, clip_text_preference the preference
    keywords' text and clip_text_target the target keywords' text (swapped they give other numbers)."""
    import csv

    from research.pmg.evaluate.run import evaluate

    world = known_world
    for item, pixels in world.pixels.items():  # what the stage reads is what was written (64 px: no resize)
        path = world.images[item] if item in world.images else world.data.image_path(item)
        np.testing.assert_array_equal(im.load_fitted(path, 64, "center_crop"), pixels)
    dummy_weights = tmp_path / "lpips.ckpt"
    dummy_weights.write_bytes(b"the distance above stands in for LPIPS")
    ecfg = EvaluateConfig(metrics=["lpips", "ssim", "clip"], image_size=64, batch_size=3, bootstrap_samples=100,
                          permutations=100, lpips_weights=str(dummy_weights))
    lpips, clip = MeanAbsoluteDistance(), HandMadeClip(world.embeddings)
    evaluate(ecfg, data=world.data, method_images={"m": world.images}, out=tmp_path / "report",
             keywords=world.keywords, lpips_model=lpips, clip_embedder=clip, progress=False)
    # 13 pairs (history and target of each sample) in batches of 3 across samples, the last one padded
    assert lpips.batches == [3] * 5 and sorted(set(clip.texts_seen)) == sorted(TEXT_EMBEDDINGS)

    with open(tmp_path / "report" / "per_sample.csv") as handle:
        rows = {r["sample"]: r for r in csv.DictReader(handle)}
    assert sorted(rows) == sorted(GENERATED)
    pairs = _pair_references(world)
    for sample, row in rows.items():
        got = {k: float(v) for k, v in row.items() if k.startswith(("lpips", "ssim", "clip"))}
        assert int(row["n_history"]) == len(HISTORIES[sample])
        for family in ("lpips", "ssim"):
            values = pairs[sample][family]
            history, target = values[:-1], values[-1]
            assert got[f"{family}_history"] == pytest.approx(history.mean(), abs=1e-6)
            assert got[f"{family}_target"] == pytest.approx(target, abs=1e-6)
            for wrong in (history[0], history[-1], history.max(), history.min(), history.sum()):
                assert abs(wrong - history.mean()) > 1e-3  # the inputs tell the mean from the alternatives
        assert got["clip_image_history"] == pytest.approx(CLIP_IMAGE_HISTORY[sample], abs=1e-12)
        assert got["clip_image_target"] == pytest.approx(CLIP_IMAGE_TARGET[sample], abs=1e-12)
        assert got["clip_text_preference"] == pytest.approx(CLIP_TEXT_PREFERENCE[sample], abs=1e-12)
        assert got["clip_text_target"] == pytest.approx(CLIP_TEXT_TARGET[sample], abs=1e-12)
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["results"]["m"]["clip_image_history"]["mean"] == pytest.approx(
        np.mean(list(CLIP_IMAGE_HISTORY.values())), abs=1e-12)


def test_clip_scale_and_clamp_apply_to_each_image_before_the_history_mean(known_world):
    """``scale * max(cos, 0)`` per history image, then the mean; chunking samples does not change a score."""
    from research.pmg.evaluate.scoring import clip_references, score_method

    world = known_world
    clip = HandMadeClip(world.embeddings)
    references = clip_references(clip, world.data.samples, world.data, world.keywords)
    records = {chunk: score_method(world.data.samples, world.images, world.data, image_size=64,
                                   resize="center_crop", pairs=None, embedder=clip, references=references,
                                   clip_scale=100.0, clip_clamp=True, chunk=chunk) for chunk in (1, 2, 16)}
    assert records[1] == records[2] == records[16]
    got = {r["sample"]: r for r in records[16]}
    clamped = {"s1": 100 * (1 + 0.6 + 0) / 3, "s2": 100 * (0.6 + 0) / 2, "s3": 100 * (0 + 0.8 + 0 + 0 + 0.8) / 5}
    for sample in GENERATED:
        assert got[sample]["clip_image_history"] == pytest.approx(clamped[sample], abs=1e-10)
        assert got[sample]["clip_text_preference"] == pytest.approx(100 * max(CLIP_TEXT_PREFERENCE[sample], 0),
                                                                    abs=1e-10)
        assert got[sample]["clip_text_target"] == pytest.approx(100 * max(CLIP_TEXT_TARGET[sample], 0), abs=1e-10)
    assert got["s2"]["clip_image_history"] != pytest.approx(100 * max(CLIP_IMAGE_HISTORY["s2"], 0))  # mean, then clamp
