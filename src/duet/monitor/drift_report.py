"""The drift report: one self-contained HTML page (plots and thumbnails inline) and its JSON.

Sections: the verdict and each detector's sentence; the embeddings of both
samples on the first two PCA axes; the predicted-class mix side by side and
its per-class change; the top-1 confidence distributions; the image
statistics; and the most atypical new images (highest outlier score, see
:mod:`duet.monitor.outliers`; for older profiles, farthest from the reference
in embedding space), with their predicted class.

A table's report (``write_table_drift_report``): the verdict, one row per
column and output with every test, a plot per drifted column (both
distributions, or the shares that moved) and of the model's outputs.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from duet.monitor.drift import DriftResult, Observations
from duet.monitor.imagestats import STAT_DESCRIPTIONS
from duet.monitor.profile import ReferenceProfile
from duet.monitor.tabular_drift import TabularDriftResult
from duet.monitor.tabular_profile import NumericReference, TabularProfile, present_values
from duet.system.atomic import write_json_atomic, write_text_atomic

ATYPICAL_SHOWN = 12
NEIGHBOURS = 5
MAX_CLASS_BARS = 40
THUMB_SIDE = 96
REF_COLOUR, CUR_COLOUR = "#4C72B0", "#DD8452"


# --------------------------------------------------------------------------- atypical images


def atypicality(reference: np.ndarray, current: np.ndarray, k: int = NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
    """Mean distance of each current row to its ``k`` nearest reference rows,
    and the share of reference rows (leave-one-out) that are less atypical."""
    ref = reference.astype(np.float64)
    cur = current.astype(np.float64)
    k = max(1, min(k, len(ref) - 1))

    def knn(a: np.ndarray, b: np.ndarray, skip_self: bool) -> np.ndarray:
        d2 = np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0.0)
        if skip_self:
            np.fill_diagonal(d2, np.inf)
        part = np.partition(d2, k - 1, axis=1)[:, :k]
        return np.sqrt(part).mean(1)

    ref_scores = np.sort(knn(ref, ref, True))
    scores = knn(cur, ref, False)
    percentile = np.searchsorted(ref_scores, scores, side="right") / len(ref_scores)
    return scores, percentile


def most_atypical(
    profile: ReferenceProfile,
    current: Observations,
    paths: Sequence[Path],
    limit: int = ATYPICAL_SHOWN,
    root: Path | None = None,
) -> list[dict[str, Any]]:
    """The ``limit`` most atypical images, each with ``path`` (as given),
    ``file`` (relative to ``root``, the data folder: class folder and name, which
    tell apart files of the same name), score, percentile and prediction.

    Ranked by the per-image outlier score when the profile has the outlier model
    (``flagged``: above the threshold the outlier-rate detector counts), else by
    the mean distance to the 5 nearest reference embeddings."""
    if len(current) == 0 or profile.n_reference < 2:
        return []
    flagged = None
    if current.outlier_scores is not None and profile.outliers is not None:
        scores = np.asarray(current.outlier_scores, dtype=np.float64)
        ref = np.sort(profile.outliers.reference_scores)
        pct = np.searchsorted(ref, scores, side="right") / len(ref)
        flagged = profile.outliers.flags(scores)
    elif current.embeddings is not None:
        scores, pct = atypicality(profile.embeddings, current.embeddings)
    else:
        return []
    order = np.argsort(-scores)[:limit]
    out = []
    for i in order:
        row: dict[str, Any] = {
            "path": str(paths[i]),
            "file": display_path(Path(paths[i]), root, paths),
            "score": float(scores[i]),
            "reference_percentile": float(pct[i]),
        }
        if flagged is not None:
            row["outlier"] = bool(flagged[i])
        if current.classes is not None:
            row["predicted"] = profile.labels[int(current.classes[i])]
            row["confidence"] = float(current.confidences[i])  # type: ignore[index]
        out.append(row)
    return out


def display_path(path: Path, root: Path | None, paths: Sequence[Path]) -> str:
    """``path`` relative to ``root`` (else to the folder all ``paths`` share), POSIX style."""
    bases = [Path(root)] if root is not None else []
    if paths:
        common = Path(os.path.commonpath([str(Path(p).parent) for p in paths]))
        bases.append(common.parent if all(Path(p).parent == common for p in paths) else common)
    for base in bases:
        try:
            return path.resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            continue
    return str(path)


# --------------------------------------------------------------------------- plots


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_embeddings(reference: np.ndarray, current: np.ndarray) -> str:
    fig = _figure(10, 4)
    left, right = fig.subplots(1, 2)
    dims = min(2, reference.shape[1])
    if dims == 2:
        left.scatter(reference[:, 0], reference[:, 1], s=8, alpha=0.5, c=REF_COLOUR, label="reference")
        left.scatter(current[:, 0], current[:, 1], s=8, alpha=0.5, c=CUR_COLOUR, label="current")
        left.set_xlabel("PCA 1")
        left.set_ylabel("PCA 2")
        left.legend(loc="best")
        left.set_title("Embeddings, first two PCA axes")
    bins = np.histogram_bin_edges(np.concatenate([reference[:, 0], current[:, 0]]), bins=30)
    right.hist(reference[:, 0], bins=bins, density=True, alpha=0.55, color=REF_COLOUR, label="reference")
    right.hist(current[:, 0], bins=bins, density=True, alpha=0.55, color=CUR_COLOUR, label="current")
    right.set_title("PCA 1 distribution")
    right.legend(loc="best")
    return _png(fig)


def plot_classes(labels: Sequence[str], reference: np.ndarray, current: np.ndarray) -> str:
    c = len(labels)
    ref = np.bincount(reference, minlength=c)[:c] / max(len(reference), 1)
    cur = np.bincount(current, minlength=c)[:c] / max(len(current), 1)
    shown = np.arange(c)
    if c > MAX_CLASS_BARS:
        shown = np.sort(np.argsort(-np.abs(cur - ref))[:MAX_CLASS_BARS])
    fig = _figure(max(8, 0.35 * len(shown) + 3), 6)
    top, bottom = fig.subplots(2, 1, sharex=True)
    x = np.arange(len(shown))
    top.bar(x - 0.2, ref[shown], 0.4, color=REF_COLOUR, label="reference")
    top.bar(x + 0.2, cur[shown], 0.4, color=CUR_COLOUR, label="current")
    top.set_ylabel("share of predictions")
    top.set_title("Predicted class" + (f" ({len(shown)} classes that moved most)" if c > MAX_CLASS_BARS else ""))
    top.legend(loc="best")
    delta = cur[shown] - ref[shown]
    bottom.bar(x, delta, color=[CUR_COLOUR if d > 0 else REF_COLOUR for d in delta])
    bottom.axhline(0, color="black", linewidth=0.8)
    bottom.set_ylabel("current - reference")
    bottom.set_title("Per-class shift")
    names = [label if len(label) <= 16 else label[:15] + "…" for label in (labels[int(i)] for i in shown)]
    bottom.set_xticks(x, names, rotation=45 if len(shown) > 8 else 0, ha="right" if len(shown) > 8 else "center")
    return _png(fig)


def plot_confidence(reference: np.ndarray, current: np.ndarray, unit: str = "images") -> str:
    return plot_distributions(reference, current, "top-1 probability", "Confidence", np.linspace(0, 1, 26), unit)


def plot_distributions(
    reference: np.ndarray, current: np.ndarray, xlabel: str, title: str, bins: np.ndarray | int, unit: str
) -> str:
    """Both samples' histograms and cumulative distributions side by side (the KS test's view)."""
    fig = _figure(10, 3.6)
    left, right = fig.subplots(1, 2)
    left.hist(reference, bins=bins, density=True, alpha=0.55, color=REF_COLOUR, label="reference")
    left.hist(current, bins=bins, density=True, alpha=0.55, color=CUR_COLOUR, label="current")
    left.set_xlabel(xlabel)
    left.set_title(title)
    left.legend(loc="upper left")
    for values, colour, name in ((reference, REF_COLOUR, "reference"), (current, CUR_COLOUR, "current")):
        v = np.sort(values)
        right.step(v, np.arange(1, len(v) + 1) / len(v), where="post", color=colour, label=name)
    right.set_xlabel(xlabel)
    right.set_ylabel(f"share of {unit} at or below")
    right.set_title("Cumulative (the KS test's view)")
    right.legend(loc="upper left")
    return _png(fig)


def _stat_value(name: str, value: float) -> str:
    if name in ("width", "height"):
        return f"{value:g} px"
    return f"{value:.2f}" if name == "aspect_ratio" else f"{value:.3g}"


def constant_stats(names: Sequence[str], reference: np.ndarray, current: np.ndarray) -> dict[str, str]:
    """The statistics with a single value in both samples, each with a sentence
    ("all images: 32 px"); a histogram of one value would be a meaningless block."""
    found = {}
    for j, name in enumerate(names):
        ref, cur = reference[:, j], current[:, j]
        if len(ref) == 0 or len(cur) == 0 or np.ptp(ref) > 1e-9 or np.ptp(cur) > 1e-9:
            continue
        a, b = _stat_value(name, float(ref[0])), _stat_value(name, float(cur[0]))
        found[name] = f"all images: {a}" if a == b else f"all reference images: {a}; all current images: {b}"
    return found


def plot_image_stats(names: Sequence[str], reference: np.ndarray, current: np.ndarray) -> str:
    cols = 3
    rows = -(-len(names) // cols)
    fig = _figure(11, 3 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    constant = constant_stats(names, reference, current)
    for j, name in enumerate(names):
        ax = axes[j]
        ax.set_title(name, fontsize=10)
        if name in constant:  # one value: say it instead of drawing a block
            ax.text(
                0.5,
                0.5,
                constant[name].replace("; ", "\n"),
                ha="center",
                va="center",
                fontsize=11,
                transform=ax.transAxes,
            )
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        both = np.concatenate([reference[:, j], current[:, j]])
        bins = np.linspace(float(both.min()), float(both.max()), 26)
        ax.hist(reference[:, j], bins=bins, density=True, alpha=0.55, color=REF_COLOUR, label="reference")
        ax.hist(current[:, j], bins=bins, density=True, alpha=0.55, color=CUR_COLOUR, label="current")
        ax.tick_params(labelsize=8)
    drawn = [axes[j] for j, name in enumerate(names) if name not in constant]
    if drawn:
        drawn[0].legend(loc="best", fontsize=8)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    return _png(fig)


def _thumbnail(path: Path) -> str:
    from PIL import Image

    from duet.data.imageio import decode

    try:
        img = Image.fromarray(decode(path, min_size=THUMB_SIDE))
    except Exception:  # a thumbnail is decoration: a file that vanished gets none
        return ""
    img.thumbnail((THUMB_SIDE, THUMB_SIDE))
    if max(img.size) < THUMB_SIDE:  # tiny images (digits) are enlarged to be visible
        scale = THUMB_SIDE / max(img.size)
        img = img.resize(
            (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.NEAREST
        )
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# --------------------------------------------------------------------------- the page


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.verdict{padding:1em;border-radius:6px;font-size:1.1em}
.drift{background:#fde8e8;border:1px solid #e0a0a0} .ok{background:#e8f6ea;border:1px solid #9ccfa5}
.insufficient{background:#fff4d6;border:1px solid #e0c070}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f5f5f5} td.num{text-align:right;font-variant-numeric:tabular-nums}
.yes{color:#b00020;font-weight:600} .no{color:#1b7f3b} .grid{display:flex;flex-wrap:wrap;gap:12px}
.card{width:150px;font-size:.8em} .card .file{overflow-wrap:anywhere}
.card img{image-rendering:pixelated;border:1px solid #ccc}
.n{white-space:nowrap}
img.plot{max-width:100%}
"""


def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "–"
    if x != 0 and abs(x) < 10**-digits:
        return f"{x:.1e}"
    return f"{x:.{digits}f}"


def _stat_cell(d: Any) -> str:
    """A detector's statistic for the table; a negative unbiased MMD² reads "≈ 0" (marked *)."""
    if d.statistic is None:
        return "–"
    if d.statistic_name == "MMD²" and d.statistic < 0:
        return f"{html.escape(d.statistic_name)} ≈ 0<sup>*</sup>"
    return f"{html.escape(d.statistic_name)} {_fmt(d.statistic)}"


def _detector_table(result: DriftResult) -> str:
    e = html.escape
    rows = [
        "<h2>Detectors</h2><table><tr><th>detector</th><th>method</th><th>statistic</th><th>p-value</th>"
        "<th>threshold</th><th>drift</th><th>what it means</th></tr>"
    ]
    for d in result.detectors:
        flag = "skipped" if d.skipped else ("<span class='yes'>yes</span>" if d.drift else "<span class='no'>no</span>")
        rows.append(
            f"<tr><td>{e(d.detector)}</td><td>{e(d.method)}</td><td class='num'>{_stat_cell(d)}</td>"
            f"<td class='num'>{_fmt(d.p_value)}</td><td class='num'>{_fmt(d.threshold)}</td>"
            f"<td>{flag}</td><td>{e(d.sentence)}</td></tr>"
        )
    rows.append("</table>")
    if any(d.statistic_name == "MMD²" and d.statistic is not None and d.statistic < 0 for d in result.detectors):
        rows.append(
            "<p><sup>*</sup> The unbiased MMD² estimate came out below 0, as it does when both samples "
            "come from the same distribution (its expectation is then 0): read it as no distance. "
            "report.json keeps the raw value (<code>statistic</code>, <code>details.mmd2_unbiased</code>).</p>"
        )
    return "\n".join(rows)


def _atypical_card(a: dict[str, Any]) -> str:
    """One thumbnail with its file name (may wrap anywhere) and its numbers (never wrapped)."""
    e = html.escape
    thumb = _thumbnail(Path(a["path"]))
    img = f"<img src='data:image/png;base64,{thumb}'>" if thumb else ""
    pred = (
        f"<br>predicted <b>{e(a['predicted'])}</b> <span class='n'>({a['confidence']:.0%})</span>"
        if "predicted" in a
        else ""
    )
    return (
        f"<div class='card'>{img}<br><span class='file' title='{e(a['path'])}'>{e(a.get('file', a['path']))}</span>"
        f"<br>{'<b>outlier</b>, ' if a.get('outlier') else ''}score <span class='n'>{a['score']:.2f}</span>, beyond "
        f"<span class='n'>{a['reference_percentile']:.0%}</span> of reference{pred}</div>"
    )


def _plots_html(profile: ReferenceProfile, current: Observations) -> list[str]:
    """The figures, reference beside current, for the signals ``current`` has."""
    e = html.escape
    parts: list[str] = []
    if not len(current):
        return parts
    if current.embeddings is not None:
        parts.append(
            "<h2>Embeddings</h2><img class='plot' src='data:image/png;base64,"
            f"{plot_embeddings(profile.embeddings, current.embeddings)}'>"
        )
    if current.classes is not None and current.confidences is not None:
        parts.append(
            "<h2>Predicted classes</h2><p>Share of predictions per class, reference beside current "
            "(top), and the per-class shift (bottom).</p><img class='plot' src='data:image/png;base64,"
            f"{plot_classes(profile.labels, profile.classes, current.classes)}'>"
        )
        parts.append(
            "<h2>Confidence</h2><img class='plot' src='data:image/png;base64,"
            f"{plot_confidence(profile.confidences, current.confidences)}'>"
        )
    if current.image_stats is not None:
        parts.append(
            "<h2>Image statistics</h2><img class='plot' src='data:image/png;base64,"
            f"{plot_image_stats(profile.stat_names, profile.image_stats, current.image_stats)}'>"
        )
        constant = constant_stats(profile.stat_names, profile.image_stats, current.image_stats)
        if constant:
            parts.append(
                "<p class='constant'>One value in both samples (drawn as text, not as a histogram): "
                + "; ".join(f"<b>{e(n)}</b>: {e(v)}" for n, v in constant.items())
                + ".</p>"
            )
        parts.append(
            "<p>" + "; ".join(f"<b>{e(n)}</b>: {e(STAT_DESCRIPTIONS.get(n, n))}" for n in profile.stat_names) + ".</p>"
        )
    return parts


def render_html(
    result: DriftResult,
    profile: ReferenceProfile,
    current: Observations,
    *,
    title: str,
    context: dict[str, Any],
    atypical: list[dict[str, Any]],
    failed: list[dict[str, str]],
) -> str:
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{e(title)}</h1>",
    ]
    css, word = {
        "drift": ("drift", "DRIFT"),
        "no_drift": ("ok", "NO DRIFT"),
        "insufficient": ("insufficient", "NOT ENOUGH DATA"),
    }[result.status]
    parts.append(f"<div class='verdict {css}'><b>{word}</b> — {e(result.sentence)}</div>")
    a = result.accuracy
    if a is not None and a["accuracy"] is not None:
        parts.append(
            f"<p class='accuracy'>Estimated accuracy without labels: <b class='n'>{a['accuracy']:.1%}</b> "
            f"(95% interval <span class='n'>{a['low']:.1%}–{a['high']:.1%}</span>, {a['n']} images) vs "
            f"<span class='n'>{a['reference_accuracy']:.1%}</span> on the labelled reference "
            f"(method {e(a['method'])}, from temperature-scaled confidences; see docs/monitoring.md)."
            + (f" <b>Caution:</b> {e(a['caution'])}." if a.get("caution") else "")
            + "</p>"
        )
    parts.append(
        "<table>"
        + "".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in context.items())
        + "</table>"
    )
    parts.append(_detector_table(result))
    parts.append(
        "<p>Drift is flagged when a detector's p-value is below its threshold: the significance "
        f"level {result.alpha:g} divided by the number of detectors that ran (Bonferroni), so the whole "
        f"verdict raises a false alarm at most {result.alpha:.0%} of the time on unchanged data.</p>"
    )
    parts += _plots_html(profile, current)
    if atypical:
        parts.append(
            "<h2>Most atypical images</h2><p>Farthest from the reference in embedding space (mean "
            f"distance to the {NEIGHBOURS} nearest reference images); the percentage is the share of "
            "reference images that are closer to their own neighbours.</p><div class='grid'>"
        )
        parts += [_atypical_card(a) for a in atypical]
        parts.append("</div>")
    if failed:
        parts.append(f"<h2>Unreadable files ({len(failed)})</h2><table><tr><th>file</th><th>reason</th></tr>")
        parts += [f"<tr><td>{e(f['path'])}</td><td>{e(f['reason'])}</td></tr>" for f in failed[:100]]
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_drift_report(
    result: DriftResult,
    profile: ReferenceProfile,
    current: Observations,
    paths: Sequence[Path],
    out_dir: Path,
    *,
    title: str,
    context: dict[str, Any],
    failed: list[dict[str, str]] | None = None,
) -> dict[str, Path]:
    """Write ``report.html`` and ``report.json`` into ``out_dir``; returns their paths.
    Images are named relative to ``context["data"]`` (the data folder) when given."""
    failed = list(failed or [])
    root = Path(context["data"]) if context.get("data") else None
    atypical = most_atypical(profile, current, paths, root=root)
    document = {"title": title, "context": context, **result.to_dict(), "most_atypical": atypical, "unreadable": failed}
    out_dir = Path(out_dir)
    return {
        "json": write_json_atomic(out_dir / "report.json", document),
        "html": write_text_atomic(
            out_dir / "report.html",
            render_html(result, profile, current, title=title, context=context, atypical=atypical, failed=failed),
        ),
    }


# --------------------------------------------------------------------------- a table's report


def _img(png: str) -> str:
    return f"<img class='plot' src='data:image/png;base64,{png}'>"


def plot_shares(column: str, shares: Sequence[dict[str, Any]]) -> str:
    """A categorical column's values that moved most: reference share beside current share."""
    fig = _figure(max(6, 1.2 * len(shares) + 2), 3.4)
    ax = fig.subplots()
    x = np.arange(len(shares))
    ax.bar(x - 0.2, [s["reference_share"] for s in shares], 0.4, color=REF_COLOUR, label="reference")
    ax.bar(x + 0.2, [s["current_share"] for s in shares], 0.4, color=CUR_COLOUR, label="current")
    names = [str(s["value"]) if len(str(s["value"])) <= 16 else str(s["value"])[:15] + "…" for s in shares]
    ax.set_xticks(x, names)
    ax.set_ylabel("share of present values")
    ax.set_title(f"{column}: the values whose share moved most")
    ax.legend(loc="best")
    return _png(fig)


def _table_columns_html(result: TabularDriftResult) -> str:
    e = html.escape
    rows = [
        "<h2>Columns and outputs</h2><table><tr><th>column</th><th>kind</th><th>score</th><th>p (column)</th>"
        "<th>p (Holm)</th><th>missing</th><th>drift</th><th>tests</th></tr>"
    ]
    ranked = sorted(result.columns, key=lambda c: (not c.drift, 2.0 if c.adjusted_p is None else c.adjusted_p))
    for c in ranked:
        flag = "skipped" if c.skipped else ("<span class='yes'>yes</span>" if c.drift else "<span class='no'>no</span>")
        d = c.details
        missing = f"{d['reference_missing']:.1%} → {d['current_missing']:.1%}" if "current_missing" in d else "–"
        tests = "<br>".join(e(f"{t['test']}: {t['finding']}") for t in c.tests) or e(c.sentence)
        score = "–" if c.statistic is None else f"{e(c.statistic_name)} {_fmt(c.statistic, 3)}"
        rows.append(
            f"<tr><td>{e(c.column)}</td><td>{e(c.kind)}</td><td class='num n'>{score}</td>"
            f"<td class='num'>{_fmt(c.p_value)}</td><td class='num'>{_fmt(c.adjusted_p)}</td>"
            f"<td class='num n'>{missing}</td><td>{flag}</td><td>{tests}</td></tr>"
        )
    rows.append("</table>")
    return "\n".join(rows)


def _table_plots_html(
    result: TabularDriftResult, profile: TabularProfile, table: Mapping[str, np.ndarray], probabilities: np.ndarray
) -> list[str]:
    """A plot per drifted column (distributions, or the shares that moved), then the model's outputs."""
    parts: list[str] = []
    references = {r.name: r for r in profile.columns}
    for c in result.drifted():
        ref = references.get(c.column)
        if isinstance(ref, NumericReference) and "ks_d" in c.details:
            cur = np.asarray(present_values("numeric", table[c.column])[0], dtype=np.float64)
            bins = np.histogram_bin_edges(np.concatenate([ref.sample, cur]), bins=30)
            parts.append(
                f"<h2>{html.escape(c.column)}</h2>"
                + _img(plot_distributions(ref.sample, cur, c.column, c.column, bins, "rows"))
            )
        elif ref is not None and c.details.get("shares"):
            parts.append(f"<h2>{html.escape(c.column)}</h2>" + _img(plot_shares(c.column, c.details["shares"])))
    if len(probabilities):
        ref_classes = np.repeat(np.arange(len(profile.labels)), profile.class_counts.astype(np.int64))
        parts.append(
            "<h2>Predicted classes</h2>" + _img(plot_classes(profile.labels, ref_classes, probabilities.argmax(1)))
        )
        parts.append("<h2>Confidence</h2>" + _img(plot_confidence(profile.confidences, probabilities.max(1), "rows")))
    return parts


def write_table_drift_report(
    result: TabularDriftResult,
    profile: TabularProfile,
    table: Mapping[str, np.ndarray],
    probabilities: np.ndarray,
    out_dir: Path,
    *,
    title: str,
    context: dict[str, Any],
    skipped: list[dict[str, Any]],
) -> dict[str, Path]:
    """``report.json`` (every test of every column) and ``report.html`` (the verdict, the
    column table, a plot per drifted column and of the model's outputs) of a table's drift."""
    e = html.escape
    css, word = {
        "drift": ("drift", "DRIFT"),
        "no_drift": ("ok", "NO DRIFT"),
        "insufficient": ("insufficient", "NOT ENOUGH DATA"),
    }[result.status]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{e(title)}</h1>",
        f"<div class='verdict {css}'><b>{word}</b> — {e(result.sentence)}</div>",
        "<table>"
        + "".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in context.items())
        + "</table>",
        _table_columns_html(result),
        "<p>A column's p-value is its smallest test's times the number of its tests; Holm's method then "
        f"corrects over every column and output, and a column drifts when its adjusted p-value is below "
        f"{result.alpha:g}: on an unchanged table, any alarm at all happens at most {result.alpha:.0%} of the time.</p>",
        *_table_plots_html(result, profile, table, np.asarray(probabilities, dtype=np.float64)),
    ]
    if skipped:
        parts.append(f"<h2>Rows left out ({len(skipped)})</h2><table><tr><th>line</th><th>reason</th></tr>")
        parts += [f"<tr><td class='num'>{s['line']}</td><td>{e(str(s['reason']))}</td></tr>" for s in skipped[:100]]
        parts.append("</table>")
    parts.append("</body></html>")
    document = {"title": title, "context": context, **result.to_dict(), "skipped": skipped}
    out_dir = Path(out_dir)
    return {
        "json": write_json_atomic(out_dir / "report.json", document),
        "html": write_text_atomic(out_dir / "report.html", "\n".join(parts)),
    }
