"""The evaluation report: tables (Markdown + CSV), a bar chart (PNG, drawn with Pillow) and an HTML gallery.

Every file is written into the folder being staged by the caller; the HTML page refers only to files
written here, by relative links, so the folder can be moved or archived and still opens in a browser. Names,
paths, ids and keywords are escaped for the page they go into (:mod:`research.pmg.textsafe`).
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont

from research.pmg import images as im
from research.pmg.evaluate.scoring import Metric
from research.pmg.evaluate.stats import Interval, PairedResult
from research.pmg.files import write_synced
from research.pmg.textsafe import html, md

# Colour-blind-safe palette (Okabe-Ito), one colour per method in table order.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
GALLERY_DIR = "gallery"


def arrow(metric: Metric) -> str:
    return "↑" if metric.higher_is_closer else "↓"


def fmt(value: float, digits: int = 4) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if isinstance(v, float) and not math.isfinite(v) else v for v in row])
    write_synced(path, buffer.getvalue().encode("utf-8"))


def per_sample_csv(path: Path, records: Mapping[str, list[dict]], metrics: list[Metric]) -> None:
    fields = ["sample", "user", "target", "n_history", "image"]
    rows = [[method, *(r[f] for f in fields), *(r.get(m.name, float("nan")) for m in metrics)]
            for method, rs in records.items() for r in rs]
    write_csv(path, ["method", *fields, *(m.name for m in metrics)], rows)


def results_csv(path: Path, results: Mapping[str, Mapping[str, Interval]], metrics: list[Metric]) -> None:
    rows = [[method, m.name, r[m.name].n, r[m.name].mean, r[m.name].low, r[m.name].high]
            for method, r in results.items() for m in metrics]
    write_csv(path, ["method", "metric", "n", "mean", "ci_low", "ci_high"], rows)


def comparison_csv(path: Path, comparisons: Mapping[str, Mapping[str, PairedResult]], baseline: str,
                   metrics: list[Metric]) -> None:
    rows = [[method, baseline, m.name, c[m.name].n, c[m.name].mean_a, c[m.name].mean_b, c[m.name].diff,
             c[m.name].low, c[m.name].high, c[m.name].p_value, c[m.name].exact]
            for method, c in comparisons.items() for m in metrics]
    write_csv(path, ["method", "baseline", "metric", "n", "mean_method", "mean_baseline", "diff", "ci_low",
                     "ci_high", "p_value", "exact"], rows)


def settings_lines(settings: Mapping[str, Any], quote: Callable[[object], str]) -> list[str]:
    """One readable line per metric family and for the statistics: what exactly produced the numbers.

    Each recorded value is passed through ``quote`` (:func:`~research.pmg.textsafe.md` or ``html``), the
    fixed wording is safe in both.
    """
    q = quote
    lines = [f"- images: {q(settings['image_size'])} x {q(settings['image_size'])} px, "
             f"{q(settings['resize']['policy'])} ({q(settings['resize']['resample'])}), transparency over white"]
    if settings.get("lpips"):
        lp = settings["lpips"]
        lines.append(f"- LPIPS v{q(lp['version'])}, {q(lp['net'])} backbone, inputs in [-1, 1], spatial average; "
                     f"weights {q(lp['weights'])} (sha256 {q(lp['sha256'][:12])})")
    if settings.get("ssim"):
        s = settings["ssim"]
        lines.append(f"- SSIM: Gaussian window sigma {q(s['sigma'])} ({q(s['win_size'])} taps, {q(s['border'])} "
                     f"borders), population covariances, data range {s['data_range']:g}, K1 {q(s['k1'])}, "
                     f"K2 {q(s['k2'])}, {q(s['channels'])}: {q(s['reference'])}")
    if settings.get("clip"):
        c = settings["clip"]
        scale = "raw cosine" if c["scale"] == 1 else f"{c['scale']:g} x cosine"
        lines.append(f"- CLIP: {q(c['model'])} ({q(c['image_size'])} px), {scale}, "
                     f"{'negative cosines clamped to 0' if c['clamp'] else 'not clamped'}; texts are the "
                     "keywords joined with ', '")
    st = settings["statistics"]
    lines.append(f"- statistics: mean with {st['confidence']:.0%} percentile bootstrap interval "
                 f"({st['bootstrap_samples']} resamples); paired comparisons: bootstrap of the mean difference "
                 f"and a two-sided sign-flip permutation test ({st['permutations']} permutations, exact when 2^n "
                 f"is fewer); seed {st['seed']}")
    return lines


def markdown(title: str, settings: Mapping[str, Any], results: Mapping[str, Mapping[str, Interval]],
             comparisons: Mapping[str, Mapping[str, PairedResult]], baseline: str, metrics: list[Metric]) -> str:
    conf = f"{settings['statistics']['confidence']:.0%}"
    lines = [f"# {md(title)}", "", *settings_lines(settings, md), "",
             f"## Scores (mean [{conf} interval])", "",
             "History scores measure personalization, target scores accuracy. ↓: lower is closer, ↑: higher is "
             "closer.", "",
             "| method | " + " | ".join(f"{md(m.label)} {arrow(m)}" for m in metrics) + " |",
             "|---|" + "---|" * len(metrics)]
    for method, r in results.items():
        cells = [f"{fmt(r[m.name].mean)} [{fmt(r[m.name].low)}, {fmt(r[m.name].high)}] (n={r[m.name].n})"
                 for m in metrics]
        lines.append(f"| {md(method)} | " + " | ".join(cells) + " |")
    if comparisons:
        lines += ["", f"## Paired comparison with {md(baseline)} (same samples)", "",
                  f"Difference = method - {md(baseline)}, with its {conf} paired bootstrap interval and the sign-flip "
                  "p-value.", "",
                  f"| method | metric | n | mean | mean of {md(baseline)} | difference | p |",
                  "|---|---|---|---|---|---|---|"]
        for method, c in comparisons.items():
            for m in metrics:
                r = c[m.name]
                lines.append(f"| {md(method)} | {md(m.label)} {arrow(m)} | {r.n} | {fmt(r.mean_a)} | {fmt(r.mean_b)} | "
                             f"{fmt(r.diff)} [{fmt(r.low)}, {fmt(r.high)}] | {fmt(r.p_value, 4)} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# Bar chart
# ---------------------------------------------------------------------------------------------------------------------
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def bar_chart(path: Path, results: Mapping[str, Mapping[str, Interval]], metrics: list[Metric], title: str) -> None:
    """One panel per metric, one bar per method (mean) with its interval as a whisker; PNG at ``path``."""
    methods = list(results)
    colours = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(methods)}
    cols = 2 if len(metrics) > 1 else 1
    rows = math.ceil(len(metrics) / cols)
    panel_w, panel_h, top = 460, 280, 60 + 20 * math.ceil(len(methods) / 4)
    img = Image.new("RGB", (cols * panel_w, top + rows * panel_h), "white")
    draw = ImageDraw.Draw(img)
    big, small = _font(18), _font(12)
    draw.text((16, 12), title, fill="black", font=big)
    for i, method in enumerate(methods):  # legend
        x, y = 16 + (i % 4) * (cols * panel_w - 32) // 4, 40 + 20 * (i // 4)
        draw.rectangle((x, y + 2, x + 12, y + 14), fill=colours[method])
        draw.text((x + 18, y), method, fill="black", font=small)
    for k, metric in enumerate(metrics):
        x0, y0 = (k % cols) * panel_w, top + (k // cols) * panel_h
        _panel(draw, (x0, y0, panel_w, panel_h), metric, [results[m][metric.name] for m in methods],
               [colours[m] for m in methods], small)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    write_synced(path, buffer.getvalue())


def _panel(draw: ImageDraw.ImageDraw, box, metric: Metric, values: list[Interval], colours: list[str], font) -> None:
    x0, y0, w, h = box
    left, right, top, bottom = x0 + 60, x0 + w - 20, y0 + 30, y0 + h - 30
    closer = "higher" if metric.higher_is_closer else "lower"
    draw.text((x0 + 60, y0 + 8), f"{metric.label} ({closer} = closer)", fill="black", font=font)
    finite = [v for iv in values for v in (iv.mean, iv.low, iv.high) if math.isfinite(v)]
    step = _nice_step(max([0.0, *finite]) - min([0.0, *finite]))
    lo, hi = math.floor(min([0.0, *finite]) / step) * step, math.ceil(max([0.0, *finite]) / step) * step
    hi = max(hi, lo + step)

    def y(v: float) -> float:
        return bottom - (v - lo) / (hi - lo) * (bottom - top)

    for t in range(round((hi - lo) / step) + 1):  # grid and tick labels
        v = lo + t * step
        draw.line((left, y(v), right, y(v)), fill="#dddddd")
        draw.text((x0 + 6, y(v) - 7), f"{v:.4g}", fill="#444444", font=font)
    draw.line((left, y(0.0), right, y(0.0)), fill="black")
    if not finite:
        draw.text((left + 10, (top + bottom) / 2), "no scores (n = 0)", fill="#888888", font=font)
    slot = (right - left) / max(len(values), 1)
    for i, (iv, colour) in enumerate(zip(values, colours)):
        if not math.isfinite(iv.mean):
            continue
        cx, half = left + slot * (i + 0.5), min(slot * 0.35, 40)
        draw.rectangle((cx - half, min(y(iv.mean), y(0.0)), cx + half, max(y(iv.mean), y(0.0))), fill=colour)
        if math.isfinite(iv.low) and math.isfinite(iv.high):
            draw.line((cx, y(iv.low), cx, y(iv.high)), fill="black", width=2)
            for v in (iv.low, iv.high):
                draw.line((cx - 6, y(v), cx + 6, y(v)), fill="black", width=2)
        draw.text((cx - half, bottom + 6), f"{iv.mean:.3f}", fill="black", font=font)


def _nice_step(span: float) -> float:
    """A tick step of 1, 2 or 5 times a power of ten giving about four intervals over ``span``."""
    if span <= 0:
        return 1.0
    raw = span / 4
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


# ---------------------------------------------------------------------------------------------------------------------
# HTML gallery
# ---------------------------------------------------------------------------------------------------------------------
def _thumbnail(src: Path, dst: Path, size: int) -> None:
    img = im.load_rgb(src)
    img.thumbnail((size, size), Image.BICUBIC)
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=90)
    write_synced(dst, buffer.getvalue())


def gallery(out: Path, rows: list[dict[str, Any]], methods: list[str], metrics: list[Metric], *, title: str,
            intro_html: str, thumb: int) -> None:
    """``out/gallery.html`` plus thumbnails in ``out/gallery/``: one row per sample, history | target | methods.

    ``rows`` items: ``sample``, ``history`` (paths), ``target`` (path), ``preference``/``target_keywords``
    (texts or ""), ``generated`` ({method: path}) and ``scores`` ({method: {metric: value}}).
    """
    folder = out / GALLERY_DIR
    folder.mkdir()
    esc = html
    body = []
    for n, row in enumerate(rows):
        cells = []
        history = []
        for i, path in enumerate(row["history"]):
            name = f"{n:04d}_h{i}.jpg"
            _thumbnail(path, folder / name, thumb)
            history.append(f'<img src="{GALLERY_DIR}/{name}" alt="history {i + 1}">')
        cells.append(f'<td class="history">{"".join(history)}<div class="kw">{esc(row["preference"])}</div></td>')
        name = f"{n:04d}_t.jpg"
        _thumbnail(row["target"], folder / name, thumb)
        cells.append(f'<td><img src="{GALLERY_DIR}/{name}" alt="target"><div class="kw">'
                     f'{esc(row["target_keywords"])}</div></td>')
        for j, method in enumerate(methods):
            name = f"{n:04d}_m{j}.jpg"
            _thumbnail(row["generated"][method], folder / name, thumb)
            scores = row["scores"][method]
            caption = "<br>".join(f"{esc(m.label)} {fmt(scores.get(m.name), 3)}" for m in metrics)
            cells.append(f'<td><img src="{GALLERY_DIR}/{name}" alt="{esc(method)}"><div class="s">{caption}</div></td>')
        body.append(f'<tr class="sample"><th>{esc(row["sample"])}</th>{"".join(cells)}</tr>')
    head = "".join(f"<th>{esc(m)}</th>" for m in methods)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 4px; vertical-align: top; text-align: center; }}
td.history img {{ max-width: {thumb // 2}px; max-height: {thumb // 2}px; margin: 1px; }}
td img {{ max-width: {thumb}px; max-height: {thumb}px; }}
.kw {{ font-size: 11px; color: #555; max-width: {thumb * 2}px; }}
.s {{ font-size: 11px; text-align: left; }}
</style></head><body>
<h1>{esc(title)}</h1>
{intro_html}
<h2>Gallery</h2>
<p>Each row: the user's history (preference keywords below), the target (target keywords below) and each method's
image with its scores for that sample.</p>
<table><tr><th>sample</th><th>history</th><th>target</th>{head}</tr>
{chr(10).join(body)}
</table></body></html>
"""
    write_synced(out / "gallery.html", page.encode("utf-8"))


def intro_html(settings: Mapping[str, Any], results: Mapping[str, Mapping[str, Interval]], metrics: list[Metric],
               chart: str) -> str:
    """Settings, the score table and the chart for the top of the gallery page."""
    esc = html
    items = "".join(f"<li>{line[2:]}</li>" for line in settings_lines(settings, html))
    head = "".join(f"<th>{esc(m.label)} {arrow(m)}</th>" for m in metrics)
    rows = "".join(
        f"<tr><th>{esc(method)}</th>" + "".join(
            f"<td>{fmt(r[m.name].mean)}<br><small>[{fmt(r[m.name].low)}, {fmt(r[m.name].high)}] n={r[m.name].n}"
            f"</small></td>" for m in metrics) + "</tr>" for method, r in results.items())
    return (f"<ul>{items}</ul><table><tr><th>method</th>{head}</tr>{rows}</table>"
            f'<p><img src="{esc(chart)}" alt="scores per method" style="max-width: 100%"></p>')
