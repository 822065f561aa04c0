"""Bad input files (issue 18, defects 6, 9, 14, 15, 16): images of every mode, hostile image folders, damaged and
mistyped checkpoints, and report text that looks like markup.

The reproductions run as a user would, ``python -m ...`` in a fresh interpreter (three at a time, in a module
fixture), and are checked like ``tests/test_bad_inputs.py``: exit code 2, exactly one ``error:`` line, the last on
stderr, naming the file, no traceback; or, for input that is legitimate, the right output. The rest calls the
readers and writers directly with inputs made here, against independent computations: NumPy and scikit-image for
pixels, a minimal GFM table splitter and ``html.parser`` for the reports.
"""
from __future__ import annotations

import html as std_html
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from skimage.color import rgba2rgb
from skimage.util import img_as_ubyte

from research.pmg.config.data import DataConfig
from research.pmg.data.images import PickleImages, check_image
from research.pmg.data.prepare import prepare
from research.pmg.errors import PMGError
from research.pmg.images import load_fitted, load_rgb
from research.pmg.scenarios import scenario
from tests.bad_input_helpers import assert_one_error_line
from tests.subprocess_env import stage_env
from tests.tiny_models import REPO, TINY_CONFIG, tiny_config

TITLE = "<b>x</b> | y"  # markup and a table pipe, in a title, an id, a keyword, a path
MINI_CLIP = REPO / "research" / "pmg" / "assets" / "mini" / "clip"
MINI_SD = REPO / "research" / "pmg" / "assets" / "mini" / "sd"


# ---------------------------------------------------------------------------------------------------------------------
# Images of every mode (defect 9: a 16-bit PNG read as pure white), both readers
# ---------------------------------------------------------------------------------------------------------------------
SIDE = 16  # square: load_fitted at this size does not resample, so its pixels are the reading itself


def _grey(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[..., None], 3, axis=2)


def _keyed(rgb: np.ndarray, transparent: np.ndarray) -> np.ndarray:
    return np.where(transparent[..., None], np.uint8(255), rgb)


def _over_white(rgba: np.ndarray) -> np.ndarray:
    return np.rint(rgba2rgb(rgba, background=(1, 1, 1)) * 255).astype(np.uint8)


def _mode_cases() -> dict[str, tuple[Image.Image, str, dict, np.ndarray, int]]:
    """id -> (image, file format, save options, expected RGB (SIDE, SIDE, 3) uint8, tolerance)."""
    rng = np.random.default_rng(18)
    sixteen = rng.integers(0, 65536, (SIDE, SIDE)).astype(np.uint16)
    sixteen[0, :2] = 0, 65535
    grey = rng.integers(0, 256, (SIDE, SIDE), dtype=np.uint8)
    rgb = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (SIDE, SIDE), dtype=np.uint8)
    alpha[0, :2] = 0, 255
    unit = rng.random((SIDE, SIDE)).astype(np.float32)
    wide = (unit * 300 - 20).astype(np.float32)  # maximum > 1: read as 0..255, clipped
    index = rng.integers(0, 8, (SIDE, SIDE), dtype=np.uint8)
    palette = rng.integers(0, 256, (8, 3), dtype=np.uint8)
    cmyk = rng.integers(0, 256, (SIDE, SIDE, 4), dtype=np.uint8)
    bits = rng.random((SIDE, SIDE)) > 0.5

    def paletted() -> Image.Image:
        img = Image.fromarray(index, "P")
        img.putpalette(palette.ravel().tolist())
        return img

    eight = _grey(img_as_ubyte(sixteen))  # scikit-image's 16 -> 8 bit conversion: the high byte
    key16, key8 = int(sixteen[3, 3]), int(grey[2, 2])
    cmyk_rgb = np.rint((255.0 - cmyk[..., :3]) * (255.0 - cmyk[..., 3:]) / 255).astype(np.uint8)
    return {
        "I;16 png": (Image.fromarray(sixteen), "PNG", {}, eight, 0),
        "I;16 png colour key": (Image.fromarray(sixteen), "PNG", {"transparency": key16},
                                _keyed(eight, sixteen == key16), 0),
        "I;16B tiff": (Image.fromarray(sixteen.astype(">u2")), "TIFF", {}, eight, 0),
        "I tiff": (Image.fromarray(sixteen.astype(np.int32)), "TIFF", {}, eight, 0),
        "I pgm": (Image.fromarray(sixteen), "PPM", {}, eight, 0),  # a 16-bit PGM opens as mode I
        "F 0..1 tiff": (Image.fromarray(unit), "TIFF", {}, _grey(np.rint(unit.astype(np.float64) * 255)
                                                               .astype(np.uint8)), 0),
        "F 0..255 tiff": (Image.fromarray(wide), "TIFF", {}, _grey(np.clip(np.rint(wide.astype(np.float64)), 0, 255)
                                                                 .astype(np.uint8)), 0),
        "1 png": (Image.fromarray(bits), "PNG", {}, _grey(np.where(bits, 255, 0).astype(np.uint8)), 0),
        "L png": (Image.fromarray(grey), "PNG", {}, _grey(grey), 0),
        "L png colour key": (Image.fromarray(grey), "PNG", {"transparency": key8},
                             _keyed(_grey(grey), grey == key8), 0),
        "P png": (paletted(), "PNG", {}, palette[index], 0),
        "P png transparent index": (paletted(), "PNG", {"transparency": 3}, _keyed(palette[index], index == 3), 0),
        "LA png": (Image.fromarray(np.dstack([grey, alpha]), "LA"), "PNG", {},
                   _over_white(np.dstack([grey, grey, grey, alpha])), 1),
        "RGB png": (Image.fromarray(rgb), "PNG", {}, rgb, 0),
        "RGBA png": (Image.fromarray(np.dstack([rgb, alpha])), "PNG", {}, _over_white(np.dstack([rgb, alpha])), 1),
        "CMYK tiff": (Image.fromarray(cmyk, "CMYK"), "TIFF", {}, cmyk_rgb, 0),
    }


MODE_CASES = _mode_cases()


def _encoded(img: Image.Image, fmt: str, options: dict) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _assert_pixels(actual: np.ndarray, expected: np.ndarray, tolerance: int) -> None:
    assert actual.shape == expected.shape and actual.dtype == np.uint8
    worst = np.abs(actual.astype(int) - expected.astype(int)).max()
    assert worst <= tolerance, f"off by up to {worst}"


@pytest.mark.parametrize("case", list(MODE_CASES))
def test_evaluate_reader_reads_every_mode(case, tmp_path):
    img, fmt, options, expected, tolerance = MODE_CASES[case]
    path = tmp_path / f"image.{fmt.lower()}"
    path.write_bytes(_encoded(img, fmt, options))
    _assert_pixels(np.asarray(load_rgb(path)), expected, tolerance)
    _assert_pixels(load_fitted(path, SIDE, "center_crop"), expected, tolerance)


@pytest.mark.parametrize("case", list(MODE_CASES))
def test_data_reader_accepts_and_keeps_every_mode(case, tmp_path):
    """A file in a format the data stage takes is accepted as is; a pickled PIL image of any mode becomes bytes
    that every later stage reads as the expected pixels."""
    img, fmt, options, expected, tolerance = MODE_CASES[case]
    if fmt == "PNG":
        assert check_image(_encoded(img, fmt, options)) == ".png"
    img = img.copy()
    if options.get("transparency") is not None:
        img.info["transparency"] = options["transparency"]  # what opening the file would have set
    (tmp_path / "images.pkl").write_bytes(pickle.dumps({"k": img}))
    data = PickleImages(tmp_path / "images.pkl", allow_pickle=True).get("k").read()
    assert check_image(data) == ".png"
    _assert_pixels(np.asarray(load_rgb(io.BytesIO(data))), expected, tolerance)


@pytest.mark.parametrize("shape", [(SIDE, SIDE), (SIDE, SIDE, 3)])
def test_data_reader_reads_uint16_arrays_as_16_bit(shape, tmp_path):
    values = np.random.default_rng(9).integers(0, 65536, shape).astype(np.uint16)
    (tmp_path / "images.pkl").write_bytes(pickle.dumps({"k": values}))
    data = PickleImages(tmp_path / "images.pkl", allow_pickle=True).get("k").read()
    expected = img_as_ubyte(values)
    _assert_pixels(np.asarray(load_rgb(io.BytesIO(data))), expected if expected.ndim == 3 else _grey(expected), 0)


def test_a_mode_without_a_faithful_rgb_reading_is_refused(tmp_path):
    lab = Image.new("LAB", (SIDE, SIDE), (128, 40, 200))  # Pillow would copy the channels into R, G, B
    path = tmp_path / "lab.tiff"
    lab.save(path)
    with pytest.raises(PMGError, match=r"lab\.tiff.*mode LAB"):
        load_rgb(path)
    (tmp_path / "images.pkl").write_bytes(pickle.dumps({"k": lab}))
    with pytest.raises(ValueError, match="mode LAB"):
        PickleImages(tmp_path / "images.pkl", allow_pickle=True).get("k").read()


# ---------------------------------------------------------------------------------------------------------------------
# The reproductions, as a user runs them (defects 6, 14, 15)
# ---------------------------------------------------------------------------------------------------------------------
AS_ROOT = os.geteuid() == 0  # root reads a chmod 000 file, so that case only exists for other users
HOSTILE = {  # item id -> what stands in the images folder under its name, and the reason the stage must give
    "2603": ("a link to itself", "Too many levels of symbolic links"),
    "1f313": ("a dangling link", "No such file or directory"),
    "1f324": ("a folder", "Is a directory"),
    "1f326": ("a FIFO", "not a regular file"),
    **({} if AS_ROOT else {"1f329": ("a file nobody may read", "Permission denied")}),
}


def _hostile_raw(w: Path) -> Path:
    """The bundled sticker sample with HOSTILE entries in its images folder, plus loops named like no item."""
    raw = w / "raw"
    shutil.copytree(scenario("stickers").raw_sample, raw)
    images = raw / "images"
    for item, (kind, _) in HOSTILE.items():
        path = images / f"{item}.png"
        path.unlink()
        if kind == "a link to itself":
            path.symlink_to(path.name)
        elif kind == "a dangling link":
            path.symlink_to("nothing-here.png")
        elif kind == "a folder":
            path.mkdir()
        elif kind == "a FIFO":
            os.mkfifo(path)
        else:
            path.write_bytes((scenario("stickers").raw_sample / "images" / f"{item}.png").read_bytes())
            path.chmod(0)
    (images / "loop.png").symlink_to("loop.png")
    (images / "loop").symlink_to("loop")
    # a key with a regular file and a folder named like an image: the file is used
    (images / "1f32b.jpg").mkdir()
    return raw


def _damaged_clip(w: Path) -> Path:
    clip = w / "clip-truncated"
    shutil.copytree(MINI_CLIP, clip)
    weights = clip / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return clip


def _int32_soft_checkpoint(w: Path) -> Path:
    """A soft_preference.ckpt with the right names and shapes whose tensors are int32."""
    import mindspore as ms
    from mindspore import nn

    from research.pmg.models.soft_preference import SoftPreferenceEncoder

    cfg = tiny_config(w / "unused")
    encoder = SoftPreferenceEncoder(nn.Cell(), cfg.models.llm, cfg.models.soft_preference,
                                    cfg.models.diffusion.unet["cross_attention_dim"])
    params = [{"name": n, "data": ms.Tensor(np.ones(p.shape, np.int32))}
              for n, p in encoder.parameters_and_names() if p.requires_grad]
    path = w / "int32" / "soft_preference.ckpt"
    path.parent.mkdir()
    ms.save_checkpoint(params, str(path))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("bad-files")
    prepare("stickers", DataConfig(out=str(w / "data"), max_users=3), progress=False)
    samples = [json.loads(line) for line in (w / "data" / "samples.jsonl").read_text().splitlines()]
    records = [json.dumps({"id": s["id"], "user_id": s["user_id"], "target": s["target"], "status": "ok",
                           "preference_keywords": ["cute"], "target_keywords": ["cat"]}) for s in samples]
    (w / "keywords.jsonl").write_text("".join(r + "\n" for r in records))
    (w / "method").mkdir()
    for s in samples:
        shutil.copy(w / "data" / "images" / f"{s['target']}.png", w / "method" / f"{s['id']}.png")
    _hostile_raw(w)
    _damaged_clip(w)
    _int32_soft_checkpoint(w)
    return w


def _cases(w: Path) -> dict[str, tuple[str, list[str]]]:
    cfg = ["--config", str(TINY_CONFIG), "--set", f"runtime.output_dir={w / 'out'}", "--set", f"data.out={w / 'data'}"]
    return {
        "prepare-hostile-images": ("research.pmg.data.prepare", [
            "--scenario", "stickers", "--raw", str(w / "raw"), "--out", str(w / "prepared"), "--no-progress"]),
        "evaluate-truncated-clip": ("research.pmg.evaluate", [
            *cfg, "--set", f"models.clip.path={w / 'clip-truncated'}", "--keywords", str(w / "keywords.jsonl"),
            "--set", "evaluate.metrics=[clip]", "--method", f"x={w / 'method'}", "--out", str(w / "evaluate"),
            "--no-progress"]),
        "generate-int32-soft-checkpoint": ("research.pmg.generate", [
            *cfg, "--keywords", str(w / "keywords.jsonl"),
            "--soft-checkpoint", str(w / "int32" / "soft_preference.ckpt"), "--set", "generate.steps=1",
            "--set", "generate.max_samples=1",
            "--out", str(w / "generate"), "--no-progress"]),
    }


@pytest.fixture(scope="module")
def results(world) -> dict[str, subprocess.CompletedProcess]:
    env = stage_env()

    def one(item):
        name, (module, argv) = item
        return name, subprocess.run([sys.executable, "-m", module, *argv], cwd=world, env=env, capture_output=True,
                                    text=True, timeout=600)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(one, _cases(world).items()))


def test_hostile_entries_in_the_images_folder_are_counted_unreadable(results, world):
    """Defect 14: a self-loop link aborted prepare (exit 1); now it, a dangling link, a folder, a FIFO and an
    unreadable file named like an item's image are each an ``unreadable_image`` issue and the rest is prepared."""
    proc = results["prepare-hostile-images"]
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in output, output[-3000:]
    summary = json.loads((world / "prepared" / "summary.json").read_text())
    assert summary["counts"]["unreadable_images"] == len(HOSTILE) and summary["counts"]["missing_images"] == 0
    issues = (world / "prepared" / "issues.txt").read_text().splitlines()
    for item, (kind, reason) in HOSTILE.items():
        mine = [line for line in issues if f"item {item}: " in line]
        assert len(mine) == 1 and "unreadable_image" in mine[0] and reason in mine[0], (kind, mine)
    assert not any("item 1f32b: " in line for line in issues)  # its regular file won over the folder


def test_truncated_clip_weights_at_evaluate_areassert_one_error_line(results, world):
    """Defect 6: a SafetensorError traceback before."""
    error = assert_one_error_line(results["evaluate-truncated-clip"])
    assert f"{world / 'clip-truncated' / 'model.safetensors'} cannot be read" in error, error


def test_int32_soft_preference_checkpoint_is_refused(results, world):
    """Defect 15: the int32 tensors were cast to float and used."""
    error = assert_one_error_line(results["generate-int32-soft-checkpoint"])
    assert str(world / "int32" / "soft_preference.ckpt") in error and "wrong dtype" in error, error
    assert re.search(r"mm_tokens \(file Int32, model Float32\)", error), error


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoint dtypes and damaged weight files, loader by loader
# ---------------------------------------------------------------------------------------------------------------------
def _dense_checkpoint(path: Path, dtype) -> Path:
    import mindspore as ms

    ms.save_checkpoint([{"name": "weight", "data": ms.Tensor(np.full((2, 3), 1.5).astype(dtype))},
                        {"name": "bias", "data": ms.Tensor(np.zeros(2, np.float32))}], str(path))
    return path


def test_checkpoint_dtype_rule_kind_must_match_width_may_differ(tmp_path):
    from mindspore import nn

    from research.pmg.models.weights import CheckpointError, load_checkpoint_into

    for dtype, name in ((np.int32, "Int32"), (np.bool_, "Bool")):
        path = _dense_checkpoint(tmp_path / f"{name}.ckpt", dtype)
        with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))} does not match the model; wrong dtype "
                                                  rf"\(1\): weight \(file {name}, model Float32\)"):
            load_checkpoint_into(nn.Dense(3, 2), path, what="test")
    dense = nn.Dense(3, 2)
    load_checkpoint_into(dense, _dense_checkpoint(tmp_path / "half.ckpt", np.float16), what="test")
    assert dense.weight.dtype == dense.bias.dtype and np.all(dense.weight.asnumpy() == 1.5)  # fp16 into fp32: cast


def test_pretrained_weights_are_checked_before_and_after_loading(tmp_path):
    from mindspore import nn
    from safetensors.numpy import save_file

    from research.pmg.models.weights import CheckpointError, load_pretrained

    folder = tmp_path / "model"
    folder.mkdir()
    weights = folder / "model.safetensors"
    save_file({"weight": np.ones((2, 3), np.int32), "bias": np.zeros(2, np.float32)}, str(weights))
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(weights))} does not match the model; wrong dtype "
                                              r"\(1\): weight \(file I32, model Float32\)"):
        load_pretrained(lambda: nn.Dense(3, 2), folder, what="test")
    save_file({"weight": np.ones((2, 3), np.float16), "bias": np.zeros(2, np.float32)}, str(weights))
    assert isinstance(load_pretrained(lambda: nn.Dense(3, 2), folder, what="test"), nn.Dense)
    weights.write_bytes(weights.read_bytes()[:-5])
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(weights))} cannot be read \(truncated"):
        load_pretrained(lambda: pytest.fail("loaded a truncated file"), folder, what="test")


def test_truncated_lpips_weights_are_refused(tmp_path):
    from research.pmg.models.lpips import LPIPS, load_lpips
    from research.pmg.models.weights import CheckpointError, save_checkpoint_of

    path = tmp_path / "lpips_alex.ckpt"
    save_checkpoint_of(LPIPS("alex"), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))} cannot be read"):
        load_lpips("alex", str(path))


def test_truncated_stable_diffusion_weights_are_refused(tmp_path, runtime):
    import dataclasses

    from research.pmg.config import DiffusionConfig
    from research.pmg.models.diffusion import build_diffusion

    sd = tmp_path / "sd"
    shutil.copytree(MINI_SD, sd)
    weights = next((sd / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(PMGError, match=re.escape(str(weights))):
        build_diffusion(dataclasses.replace(DiffusionConfig(), path=str(sd)), runtime)


# ---------------------------------------------------------------------------------------------------------------------
# Report text that looks like markup (defect 16)
# ---------------------------------------------------------------------------------------------------------------------
def gfm_cells(row: str) -> list[str]:
    """The cells of a GFM table row: split at every pipe no backslash escapes (GFM splits before reading spans)."""
    body = row.strip()
    assert body.startswith("|") and body.endswith("|") and not body.endswith("\\|"), row
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", body[1:-1])]


def shown_text(markdown: str, *, table_cell: bool = False) -> str:
    """The text a CommonMark renderer shows for inline ``markdown`` (no emphasis or links in it): backslash escapes
    and entities resolved, code spans verbatim (in a table cell with ``\\|`` read as ``|``, as GFM does). Raw HTML,
    which a renderer keeps as markup, fails."""
    out, i = [], 0
    while i < len(markdown):
        ch, rest = markdown[i], markdown[i:]
        if ch == "\\" and re.match(r"\\[!-/:-@\[-`{-~]", rest):
            out.append(rest[1])
            i += 2
        elif ch == "`":
            fence = re.match(r"`+", rest).group()
            close = re.compile(rf"(?<!`){fence}(?!`)").search(markdown, i + len(fence))
            if close is None:  # no closing run: the backticks are text
                out.append(fence)
                i += len(fence)
                continue
            code = markdown[i + len(fence):close.start()]
            if code.startswith(" ") and code.endswith(" ") and code.strip():
                code = code[1:-1]
            out.append(code.replace("\\|", "|") if table_cell else code)
            i = close.end()
        elif ch == "&" and re.match(r"&(#[0-9]+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);", rest):
            entity = re.match(r"&[^;]+;", rest).group()
            out.append(std_html.unescape(entity))
            i += len(entity)
        else:
            assert not re.match(r"<[A-Za-z/!?]", rest), f"raw HTML in {markdown!r}"
            out.append(ch)
            i += 1
    return "".join(out)


def test_markdown_escaper_round_trips_through_the_reference_reading():
    from research.pmg.textsafe import md, md_code

    for text in (TITLE, "a\\b *c* _d_ [e](f) ~g~ $h$ &amp; `i`", "``", " x ", "line\nbreak"):
        flat = " ".join(text.splitlines())
        assert shown_text(md(text)) == flat
        assert shown_text(md_code(text)) == flat
        cells = [md(text).strip(), md_code(text, in_table=True)]  # GFM trims cells; a code span keeps its spaces
        assert gfm_cells(f"| {cells[0]} | {cells[1]} |") == cells
        assert shown_text(md_code(text, in_table=True), table_cell=True) == flat


def test_users_table_escapes_titles_ids_and_keywords():
    """Defect 16, as filed: HTML and ``|`` in a title broke the users table of report.md."""
    from research.pmg.records.samples import Item, Sample
    from research.pmg.pipeline.users import UserRow, markdown

    items = {i: Item(id=i, title=f"{TITLE} {i}") for i in ("1", "2", "3")}
    sample = Sample(id="u|1:<i>2</i>", user_id="u|1", history=("1", "2"), target="3", split="test")
    row = UserRow(label="cat lover", sample=sample, images={"PMG": Path("x.png")},
                  preference_keywords=(TITLE, "cute"), target_keywords=("*cat*",))
    lines = markdown([row], SimpleNamespace(items=items), "users.png")
    header = next(line for line in lines if line.startswith("| user |"))
    body = next(line for line in lines if line.startswith("| cat lover |"))
    cells = gfm_cells(body)
    assert len(cells) == len(gfm_cells(header)) == 6
    assert [shown_text(c, table_cell=True) for c in cells] == [
        "cat lover", sample.id, f"{TITLE} 1; {TITLE} 2", f"{TITLE} 3", f"{TITLE}, cute", "*cat*"]


def test_pipeline_report_escapes_paths_and_model_ids(tmp_path):
    from research.pmg.records.keywords import summary_path
    from research.pmg.pipeline.report import render
    from research.pmg.layout import Layout

    root, data = tmp_path / f"out {TITLE}", tmp_path / f"data {TITLE}"
    cfg = tiny_config(root, f"data.out={data}")
    paths = Layout.of(cfg)
    summary_path(paths.keywords).parent.mkdir(parents=True)
    summary_path(paths.keywords).write_text(json.dumps({"counts": {"samples": 1}, "model_id": TITLE}))
    report = render(cfg, paths, {}, config_path=f"con`fig {TITLE}.yaml").splitlines()
    config_line = next(line for line in report if line.startswith("- config:"))
    assert shown_text(config_line) == f"- config: con`fig {TITLE}.yaml; output folder: {root}"
    prepare_row = gfm_cells(next(line for line in report if line.startswith("| prepare |")))
    assert len(prepare_row) == 3 and shown_text(prepare_row[2], table_cell=True) == str(data)
    assert shown_text(next(line for line in report if "(model " in line)).endswith(f"(model {TITLE})")


def _settings(model: str) -> dict:
    return {"image_size": 64, "resize": {"policy": "center_crop", "resample": "bicubic"},
            "clip": {"model": model, "image_size": 32, "scale": 1.0, "clamp": False},
            "statistics": {"confidence": 0.95, "bootstrap_samples": 10, "permutations": 10, "seed": 0}}


def test_evaluation_markdown_escapes_title_and_settings():
    from research.pmg.evaluate.report import markdown
    from research.pmg.evaluate.scoring import METRICS
    from research.pmg.evaluate.stats import Interval

    metrics = [m for m in METRICS if m.family == "clip"]
    results = {"pmg": {m.name: Interval(n=2, mean=0.5, low=0.4, high=0.6) for m in metrics}}
    text = markdown(f"evaluation of {TITLE}", _settings(f"clip {TITLE}"), results, {}, "pmg", metrics).splitlines()
    assert shown_text(text[0]) == f"# evaluation of {TITLE}"
    assert shown_text(next(line for line in text if line.startswith("- CLIP:"))).startswith(f"- CLIP: clip {TITLE} (")
    assert len(gfm_cells(next(line for line in text if line.startswith("| pmg |")))) == 1 + len(metrics)


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text, self.alts = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.alts += [value for name, value in attrs if name == "alt"]

    def handle_data(self, data):
        self.text.append(data)


def test_gallery_escapes_every_text(tmp_path):
    from research.pmg.evaluate.report import gallery, intro_html
    from research.pmg.evaluate.scoring import METRICS
    from research.pmg.evaluate.stats import Interval

    image = tmp_path / "image.png"
    Image.new("RGB", (8, 8), "red").save(image)
    metrics = [m for m in METRICS if m.family == "clip"]
    results = {"pmg": {m.name: Interval(n=1, mean=0.5, low=0.4, high=0.6) for m in metrics}}
    rows = [{"sample": f"sample {TITLE}", "history": [image], "target": image, "preference": f"pref {TITLE}",
             "target_keywords": f"target {TITLE}", "generated": {"pmg": image}, "scores": {"pmg": {}}}]
    out = tmp_path / "report"
    out.mkdir()
    gallery(out, rows, ["pmg"], metrics, title=f"title {TITLE}",
            intro_html=intro_html(_settings(f"clip {TITLE}"), results, metrics, "chart.png"), thumb=16)
    page = _Page()
    page.feed((out / "gallery.html").read_text())
    assert "b" not in page.tags
    text = " ".join(page.text)
    for shown in (f"sample {TITLE}", f"pref {TITLE}", f"target {TITLE}", f"title {TITLE}", f"clip {TITLE}"):
        assert shown in text, shown
