"""The evaluation stage end to end: scores that rank methods sensibly, a report that renders, clean failures."""
import json
import re
import sys

import mindspore as ms
import numpy as np
import pytest
from PIL import Image

from research.pmg.cli import USER_ERROR_EXIT, run
from research.pmg.config import ConfigError
from research.pmg.config.evaluate import EvaluateConfig, MethodConfig
from research.pmg.errors import PMGError
from research.pmg.evaluate.methods import MANIFEST, MethodPlan, plan_methods, run_method
from tests.tiny_models import TINY_CONFIG, tiny_config

# The tiny CLIP's text tower pools at its EOS token: give it the tiny tokenizer's EOS id (vocab_size - 1).
CLIP_EOS = "models.clip.text_config.eos_token_id=999"
FAST = dict(image_size=64, bootstrap_samples=500, permutations=2000, batch_size=4)


@pytest.fixture(scope="module")
def world(tmp_path_factory, runtime):
    """The bundled sticker sample prepared, keywords from titles, two methods' images and LPIPS weights."""
    from research.pmg.config.data import DataConfig
    from research.pmg.data.prepare import prepare
    from research.pmg.records.samples import load_prepared
    from research.pmg.models.lpips import LPIPS
    from research.pmg.models.weights import save_checkpoint_of
    from research.pmg.runtime import seed_everything

    root = tmp_path_factory.mktemp("evaluate")
    prepare("stickers", DataConfig(), output_dir=str(root), progress=False)
    data = load_prepared(root / "data")
    (root / "keywords").mkdir()
    lines = [{"id": s.id, "user_id": s.user_id, "target": s.target, "status": "ok",
              "preference_keywords": [data.items[h].title for h in s.history][:4],
              "target_keywords": [data.items[s.target].title]} for s in data.samples]
    (root / "keywords" / "keywords.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    rng = np.random.default_rng(0)
    test = data.split("test")
    for name, noise, skip in (("close", 10, 0), ("far", 0, 2)):
        folder = root / "generated" / name
        folder.mkdir(parents=True)
        for sample in test[skip:]:
            if noise:  # the target, slightly disturbed: close to the target by every measure
                target = Image.open(data.image_path(sample.target)).convert("RGBA").resize((96, 96))
                pixels = np.asarray(Image.alpha_composite(Image.new("RGBA", (96, 96), "white"), target).convert("RGB"))
                pixels = np.clip(pixels + rng.normal(0, noise, pixels.shape), 0, 255).astype(np.uint8)
            else:  # unrelated noise
                pixels = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{sample.id}.png")
    weights = root / "lpips_alex.ckpt"
    seed_everything(0)  # a fixed random backbone, whatever ran earlier in the session
    lpips = LPIPS("alex")
    for name, param in lpips.parameters_and_names():
        if name.startswith("lin"):  # real LPIPS heads are non-negative (trained with a clamp): distances >= 0
            param.set_data(ms.Tensor(np.abs(param.asnumpy())))
    save_checkpoint_of(lpips, weights)
    return root, data


@pytest.fixture(scope="module")
def clip_embedder(world, runtime, tiny_tokenizers):
    from research.pmg.evaluate.clip_metrics import ClipEmbedder
    from research.pmg.models import build_clip_parts
    from research.pmg.runtime import seed_everything

    cfg = tiny_config(runtime.output_dir, CLIP_EOS)
    seed_everything(cfg.runtime.seed)  # random-init CLIP: the same whatever ran before in the session
    return ClipEmbedder(build_clip_parts(cfg, runtime, tiny_tokenizers), batch_size=4)


def referenced_files(page: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]*)"', page)


def test_scores_rank_methods_and_the_report_renders(world, clip_embedder, runtime):
    from research.pmg.models.lpips import load_lpips
    from research.pmg.evaluate.methods import read_images
    from research.pmg.evaluate.run import evaluate
    from research.pmg.records.keywords import load_keywords

    root, data = world
    ecfg = EvaluateConfig(lpips_weights=str(root / "lpips_alex.ckpt"), **FAST)
    images = {name: read_images(root / "generated" / name) for name in ("close", "far")}
    out = root / "report"
    summary = evaluate(ecfg, data=data, method_images=images, out=out, keywords=load_keywords(root / "keywords"),
                       lpips_model=load_lpips("alex", ecfg.lpips_weights), clip_embedder=clip_embedder,
                       scenario="stickers", progress=False)

    n = len(data.split("test"))
    assert summary["methods"] == {"close": {"images": None, "scored": n, "missing": 0},
                                  "far": {"images": None, "scored": n - 2, "missing": 2}}
    close, far = summary["results"]["close"], summary["results"]["far"]
    assert close["ssim_target"]["mean"] > 0.5 > far["ssim_target"]["mean"]
    assert close["lpips_target"]["mean"] < far["lpips_target"]["mean"]
    assert close["clip_image_target"]["mean"] > far["clip_image_target"]["mean"]
    for metric in close.values():
        assert metric["low"] <= metric["mean"] <= metric["high"]
    versus = summary["comparisons"]["far"]
    assert versus["ssim_target"]["n"] == n - 2 and versus["ssim_target"]["diff"] < 0
    assert versus["ssim_target"]["p_value"] < 0.01 and versus["ssim_target"]["high"] < 0
    assert summary["baseline"] == "close"

    # Settings that move scores are recorded with them.
    recorded = json.loads((out / "summary.json").read_text())  # strict JSON (NaN written as null)
    assert recorded["ssim"]["sigma"] == 1.5 and recorded["ssim"]["use_sample_covariance"] is False
    assert recorded["ssim"]["data_range"] == 255 and recorded["resize"]["policy"] == "center_crop"
    assert recorded["lpips"]["net"] == "alex" and len(recorded["lpips"]["sha256"]) == 64
    assert recorded["clip"]["scale"] == 1.0 and recorded["clip"]["clamp"] is False
    assert recorded["image_size"] == 64 and recorded["statistics"]["bootstrap_samples"] == 500

    # Per-sample scores: history averaged over every history image; text scores really depend on the text.
    rows = (out / "per_sample.csv").read_text().splitlines()
    assert len(rows) == 1 + n + n - 2 and rows[0].startswith("method,sample,user,target,n_history,image,lpips_history")
    prefs = {round(float(r.split(",")[-2]), 6) for r in rows[1:]}
    assert len(prefs) > 1

    table = (out / "results.md").read_text()
    assert "| close |" in table and "Paired comparison with close" in table and "sigma 1.5" in table
    assert (out / "results.csv").read_text().count("\n") == 1 + 2 * 8

    with Image.open(out / "chart.png") as chart:
        chart.load()
        assert chart.format == "PNG" and chart.width >= 800 and len(chart.getcolors(1 << 20)) > 5

    page = (out / "gallery.html").read_text()
    links = referenced_files(page)
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert links and all(not link.startswith(("/", "http:", "https:", "file:")) for link in links)
    assert set(links) <= written  # the page refers only to files the report wrote ...
    assert {f"gallery/{p.name}" for p in (out / "gallery").iterdir()} <= set(links) | {"chart.png"}  # ... all of them
    assert "chart.png" in links and page.count('<tr class="sample">') == n - 2  # rows: samples every method has
    for link in links:
        with Image.open(out / link) as img:
            img.verify()


def test_cli_runs_and_refuses_bad_input_without_writing(world, capsys):
    from research.pmg.evaluate.__main__ import main

    root, data = world
    base = ["--config", str(TINY_CONFIG), "--set", f"runtime.output_dir={root}", "--set", CLIP_EOS,
            "--set", "evaluate.image_size=64", "--set", "evaluate.batch_size=4",
            "--set", "evaluate.bootstrap_samples=200", "--set", "evaluate.permutations=200", "--no-progress"]
    methods = ["--method", f"close={root / 'generated' / 'close'}", "--method", f"far={root / 'generated' / 'far'}"]
    weights = ["--set", f"evaluate.lpips_weights={root / 'lpips_alex.ckpt'}"]
    out = root / "evaluate"
    vgg = root / "lpips_vgg.ckpt"
    from research.pmg.models.lpips import LPIPS
    from research.pmg.models.weights import save_checkpoint_of

    save_checkpoint_of(LPIPS("vgg"), vgg)
    for bad, message in (
            (methods, "evaluate.lpips_weights: needed when metrics include lpips"),
            (["--method", f"x={root / 'nowhere'}", "--set", "evaluate.metrics=[ssim]"],
             "method x: images not found at"),
            (["--method", "x", "--set", "evaluate.metrics=[ssim]"], "expected NAME=IMAGES"),
            ([*methods, "--set", "evaluate.metrics=[ssim,fid]"], "'fid' is not one of"),
            ([*methods, "--set", f"evaluate.lpips_weights={vgg}", "--set", "evaluate.metrics=[lpips]"],
             "does not match the model"),
            ([*methods, "--set", "evaluate.metrics=[ssim]", "--set", "evaluate.split=train"],
             "method close: no image for any of the"),
            ([*methods, "--set", "evaluate.split=dev"], "field 'evaluate.split' = 'dev'; choose one of")):
        assert exit_code(main, base + bad) == USER_ERROR_EXIT
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
        assert not out.exists()

    assert run(main, base + methods + weights + ["--set", "evaluate.max_samples=4"]) == 0
    printed = capsys.readouterr().out
    assert "evaluate: 4 samples of split test, 2 method(s)" in printed and "close (n=4): " in printed
    assert "far (n=2, 2 without an image): " in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"]["far"] == {"images": str(root / "generated" / "far"), "scored": 2, "missing": 2}
    assert summary["config"]["models"]["clip"]["text_config"]["eos_token_id"] == 999
    assert sorted(p.name for p in out.iterdir()) == [".pmg-owned", "chart.png", "comparison.csv", "gallery",
                                                     "gallery.html", "per_sample.csv", "results.csv", "results.md",
                                                     "summary.json"]


def exit_code(main, argv) -> int:
    """What the process would exit with: user errors (and argparse's) give 2 with one line on stderr."""
    try:
        return run(main, argv)
    except SystemExit as exc:
        return exc.code


def test_baselines_and_sweeps_plan_their_runs(world, tmp_path, capsys):
    root, _ = world
    ecfg = EvaluateConfig(metrics=["ssim"], methods=[
        MethodConfig("pmg"), MethodConfig("given", images=str(root / "generated" / "close")),
        MethodConfig("soft_only", overrides=["train.conditioning=soft_only"])],
        sweep={"train.lr": [0.001], "models.clip.projection_dim": [32]},
        run_overrides=["data.out={output_dir}/data", "train.keywords={run_dir}/keywords/keywords.jsonl"])
    ecfg.validate("evaluate.")
    plans = {p.name: p for p in plan_methods(ecfg, output_dir=root, main_images=root / MANIFEST,
                                             config=str(TINY_CONFIG), overrides=[CLIP_EOS])}
    assert list(plans) == ["pmg", "given", "soft_only", "lr=0.001", "projection_dim=32"]
    assert plans["pmg"].images == root / "generate" / "manifest.jsonl" and plans["pmg"].commands == ()
    assert plans["given"].images == root / "generated" / "close" and not plans["given"].missing()
    soft = plans["soft_only"]
    assert soft.run_dir == root / "methods" / "soft_only"
    assert soft.images == soft.run_dir / "generate" / "manifest.jsonl"
    assert [c[2] for c in soft.commands] == ["research.pmg.train", "research.pmg.generate"] and soft.retrains
    flags = " ".join(soft.commands[1])
    assert (f"--set {CLIP_EOS} --set data.out={root}/data --set train.keywords={soft.run_dir}/keywords/keywords.jsonl "
            f"--set train.conditioning=soft_only --set runtime.output_dir={soft.run_dir} "
            f"--set runtime.cache_dir={root}/cache") in flags
    assert [c[2] for c in plans["projection_dim=32"].commands] == ["research.pmg.generate"]
    with pytest.raises(ConfigError, match="train.no_such_key"):
        plan_methods(EvaluateConfig(metrics=["ssim"], methods=[MethodConfig("x", overrides=["train.no_such_key=1"])]),
                     output_dir=root, main_images=root / MANIFEST, config=str(TINY_CONFIG), overrides=[])

    # A run: its folder links the main run's inputs (not train/ when it retrains) and its commands make the images.
    run_dir = tmp_path / "methods" / "m"
    (tmp_path / "train").mkdir()
    (tmp_path / "data").mkdir()
    make = ("import pathlib; p = pathlib.Path('generate'); p.mkdir(); "
            "(p / 'manifest.jsonl').write_text('')")
    plan = MethodPlan("m", run_dir / "generate" / "manifest.jsonl", run_dir,
                      ((sys.executable, "-c", f"import os; os.chdir({str(run_dir)!r}); {make}"),), retrains=True)
    run_method(plan, output_dir=tmp_path)
    assert (run_dir / "data").is_symlink() and (run_dir / "data").resolve() == (tmp_path / "data").resolve()
    assert not (run_dir / "train").exists() and not (run_dir / "keywords").exists() and not plan.missing()
    # Other commands (a changed setting) make the finished run stale: it is set aside and made again.
    changed = MethodPlan("m", plan.images, run_dir, ((sys.executable, "-c", f"import os; os.chdir({str(run_dir)!r}); "
                                                      f"{make}; print('changed')"),), retrains=True)
    assert changed.missing() and changed.images.exists()
    run_method(changed, output_dir=tmp_path)
    assert not changed.missing() and plan.missing()
    assert [p.name.split(".stale-")[0] for p in (tmp_path / "methods").glob("m.stale-*")] == ["m"]
    assert json.loads((run_dir / "plan.json").read_text())[0][-1].endswith("print('changed')")
    failing = MethodPlan("bad", tmp_path / "none.jsonl", tmp_path / "methods" / "bad",
                         ((sys.executable, "-c", "raise SystemExit(3)"),))
    with pytest.raises(PMGError, match=r"method bad: -c raise SystemExit\(3\) exited with code 3"):
        run_method(failing, output_dir=tmp_path)
    assert (tmp_path / "methods" / "bad" / "train").is_symlink()


def test_the_main_method_is_scored_from_where_generate_wrote(tmp_path, capsys):
    """``evaluate --plan`` finds the main run's images through the layout: ``generate.out`` when set."""
    from research.pmg.evaluate.__main__ import main

    base = ["--config", str(TINY_CONFIG), "--set", f"runtime.output_dir={tmp_path}", "--set", "evaluate.metrics=[ssim]",
            "--plan"]
    assert main(base) == 0
    assert f"pmg: {tmp_path / 'generate' / 'manifest.jsonl'} (missing)" in capsys.readouterr().out
    assert main([*base, "--set", f"generate.out={tmp_path / 'elsewhere'}"]) == 0
    assert f"pmg: {tmp_path / 'elsewhere' / 'manifest.jsonl'} (missing)" in capsys.readouterr().out
