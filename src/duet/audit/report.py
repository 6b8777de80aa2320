"""RUN/audit/: privacy.json, privacy.md and roc.png from the audit's report dict.

The figure is drawn on a bare Agg canvas (no pyplot, no display needed): the
ROC of each attack on log-log axes (the low-FPR region LiRA argues is the one
that matters: an attack that is sure about a few images is a real leak even
at AUC 0.5) and on linear axes, with the chance line.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from duet.system.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic

SHORT_NAMES = {"loss": "loss threshold", "lira_offline": "offline LiRA"}


def write_outputs(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write the three files (each atomically) and return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": out_dir / "privacy.json", "md": out_dir / "privacy.md", "png": out_dir / "roc.png"}
    write_bytes_atomic(files["png"], render_roc_png(report))
    write_text_atomic(files["md"], render_markdown(report))
    write_json_atomic(files["json"], report)
    return files


def _fmt_eps(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def attack_rows(report: dict[str, Any], *, short: bool = False) -> list[list[str]]:
    """One row per attack: name, AUC, TPR at 1 % FPR (0.1 %), ε lower bound.
    ``short``: the attack's short name (a terminal table)."""
    rows = []
    for key, a in report["attacks"].items():
        at = a["tpr_at_fpr"]
        low = f"{100 * at['0.001']:.1f}%" if "0.001" in at else ("n/a" if short else "n/a (< 1000 non-members)")
        name = SHORT_NAMES.get(key, key) if short else a["name"]
        rows.append([name, f"{a['auc']:.3f}", f"{100 * at['0.01']:.1f}%", low, _fmt_eps(a["epsilon_lb"])])
    return rows


def render_markdown(report: dict[str, Any]) -> str:
    members, non = report["members"], report["non_members"]
    guarantee = report["guarantee"]
    lines = [
        f"# Privacy audit of {Path(report['run']).name}",
        "",
        f"Membership inference on `{report['run']}` ({report['model']}), {report['created']}.",
        "",
        f"- members: {members['count']} of the {members['available']} images of {members['source']}",
        f"- non-members: {non['count']} of the {non['available']} images of {non['source']} ({non['note']})",
        f"- scored with the {report['preprocessing']}; δ = {report['delta']:g} ({report['delta_source']})",
        "",
        "| attack | ROC AUC | TPR @ 1% FPR | TPR @ 0.1% FPR | ε lower bound |",
        "|---|---:|---:|---:|---:|",
        *["| " + " | ".join(r) + " |" for r in attack_rows(report)],
        "",
    ]
    if guarantee:
        lines.append(
            f"**Guaranteed by DP-SGD:** ε = {guarantee['epsilon']} at δ = {guarantee['delta']:g} "
            f"({guarantee['accountant']} accountant): no attack can prove more than this."
        )
    else:
        lines.append("**No DP guarantee:** the run trained without DP-SGD; nothing bounds ε from above.")
    lines += ["", f"{report['epsilon_note']}.", "", _method(report), "", "![ROC](roc.png)", ""]
    return "\n".join(lines)


def _method(report: dict[str, Any]) -> str:
    text = (
        "How to read it: AUC 0.5 means the attack does no better than a coin. TPR at 1 % FPR is the share "
        "of training images the attack finds while wrongly accusing 1 % of the others; with "
        f"{report['non_members']['count']} non-members the smallest FPR measurable is "
        f"{100 / max(report['non_members']['count'], 1):.2g} %. The ε lower bound takes, over every threshold, "
        "the 95 % Clopper-Pearson bounds on TPR and FPR (and on TNR and FNR) and the ε they prove; the "
        "threshold is chosen on the same images, so it is an audit figure, not a certified one."
    )
    shadow = report["shadow"]
    if shadow.get("models"):
        text += (
            f" Offline LiRA: {shadow['models']} shadow models, {shadow['epochs']} epochs each, trained on "
            f"{shadow['trained_on']}; DP-SGD for the shadows: {shadow['dp']}; {shadow['seconds']} s."
        )
    return text


def render_roc_png(report: dict[str, Any]) -> bytes:
    fig = Figure(figsize=(10, 4.6), dpi=110)
    FigureCanvasAgg(fig)
    log_ax, lin_ax = fig.subplots(1, 2)
    min_fpr = min(a["min_fpr"] for a in report["attacks"].values())
    for a in report["attacks"].values():
        fpr, tpr = np.asarray(a["roc"]["fpr"]), np.asarray(a["roc"]["tpr"])
        label = f"{a['name'].split(' (')[0]}: AUC {a['auc']:.3f}, ε_lb {a['epsilon_lb']:.2f}"
        log_ax.plot(np.maximum(fpr, min_fpr / 2), np.maximum(tpr, min_fpr / 2), label=label)
        lin_ax.plot(fpr, tpr, label=label)
    chance = np.logspace(np.log10(min_fpr / 2), 0, 50)
    log_ax.plot(chance, chance, "k:", linewidth=1, label="chance")
    lin_ax.plot([0, 1], [0, 1], "k:", linewidth=1, label="chance")
    log_ax.set(xscale="log", yscale="log", xlim=(min_fpr / 2, 1), ylim=(min_fpr / 2, 1.05), title="log-log")
    lin_ax.set(xlim=(0, 1), ylim=(0, 1.01), title="linear")
    for ax in (log_ax, lin_ax):
        ax.set_xlabel("false positive rate (non-members called members)")
        ax.set_ylabel("true positive rate (members found)")
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Membership inference on {Path(report['run']).name}")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
