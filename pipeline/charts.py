"""The report's charts, drawn from a quality report (:mod:`pipeline.quality`) as PNG files in ``charts/``.

Each chart is one function of the report; files are written to a temporary name and renamed. The Prefect
artifacts embed the same files as data URIs (:func:`data_uri`), so the UI shows them without a file server.
"""

from __future__ import annotations

import base64
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

CHARTS_DIR = "charts"
DPI = 90


def draw_charts(run_dir: Path, report: Mapping[str, Any], records: Sequence[Mapping[str, str]]) -> dict[str, Path]:
    """Every chart the report has data for, by name (``funnel``, ``rouge_to_seed``, ...)."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(run_dir) / CHARTS_DIR
    out.mkdir(exist_ok=True)
    charts: dict[str, Path] = {"funnel": _funnel(out, report["funnel"])}
    distributions = report["distributions"]
    if distributions["rouge_to_seed"]["n"]:
        charts["rouge_to_seed"] = _rouge_histogram(out / "rouge_to_seed.png", distributions["rouge_to_seed"],
                                                   "ROUGE-L of each instruction to its nearest seed", "#4C72B0")
    if distributions["rouge_to_other"]["n"]:
        charts["rouge_to_other"] = _rouge_histogram(out / "rouge_to_other.png", distributions["rouge_to_other"],
                                                    "ROUGE-L of each instruction to its nearest other record", "#55A868")
    if report["verbs"]["top"]:
        charts["verbs"] = _verbs(out / "verbs.png", report["verbs"])
    if records:
        charts["lengths"] = _lengths(out / "lengths.png", records, distributions["lengths_unit"])
    if distributions["judge_scores"]:
        charts["judge_scores"] = _judge_scores(out / "judge_scores.png", distributions)
    return charts


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _funnel(out: Path, stages: Sequence[Mapping[str, Any]]) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.4 * len(stages) + 1.2))
    labels = [s["stage"] for s in stages][::-1]
    counts = [s["count"] for s in stages][::-1]
    bars = ax.barh(labels, counts, color="#4C72B0")
    ax.bar_label(bars, labels=[f"{c:,}" for c in counts], padding=3, fontsize=8)
    ax.set_title("Funnel: from requests to accepted records")
    ax.set_xlabel("count")
    ax.margins(x=0.15)
    fig.tight_layout()
    return _save(fig, out / "funnel.png")


def _rouge_histogram(path: Path, distribution: Mapping[str, Any], title: str, colour: str) -> Path:
    import matplotlib.pyplot as plt

    counts = distribution["histogram"]
    width = 1.0 / len(counts)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar([i * width for i in range(len(counts))], counts, width=width, align="edge", color=colour, edgecolor="white")
    ax.axvline(distribution["mean"], color="black", linestyle="--", linewidth=1, label=f"mean {distribution['mean']:.2f}")
    ax.set_xlim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("ROUGE-L F-measure")
    ax.set_ylabel("instructions")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _verbs(path: Path, verbs: Mapping[str, Any]) -> Path:
    """Self-Instruct's Fig. 3: root verbs (inner ring) and their top direct objects (outer ring)."""
    import matplotlib.pyplot as plt

    top = verbs["top"]
    palette = plt.get_cmap("tab20").colors
    colours = [palette[i % len(palette)] for i in range(len(top))]
    fig, ax = plt.subplots(figsize=(7, 7))
    ax.pie([v["count"] for v in top], labels=[v["verb"] for v in top], colors=colours, radius=0.7, labeldistance=0.55,
           wedgeprops={"width": 0.35, "edgecolor": "white"}, textprops={"fontsize": 8})
    outer_sizes, outer_labels, outer_colours = [], [], []
    for v, colour in zip(top, colours):
        for obj, count in zip(v["objects"], v["object_counts"]):
            outer_sizes.append(count)
            outer_labels.append(obj)
            outer_colours.append((*colour[:3], 0.55))
        # The verb's other objects (or none): a blank wedge, so each verb's objects sit beside it.
        outer_sizes.append(max(v["count"] - sum(v["object_counts"]), 0))
        outer_labels.append("")
        outer_colours.append("#f4f4f4")
    ax.pie(outer_sizes, labels=outer_labels, colors=outer_colours, radius=1.0, labeldistance=1.02,
           wedgeprops={"width": 0.3, "edgecolor": "white"}, textprops={"fontsize": 6})
    ax.set_title(f"Root verbs (inner) and their direct objects (outer): the pairs shown cover "
                 f"{100 * verbs['coverage']:.1f}% of instructions", fontsize=9)
    return _save(fig, path)


def _lengths(path: Path, records: Sequence[Mapping[str, str]], unit: str) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, key, colour in zip(axes, ("instruction", "input", "output"), ("#4C72B0", "#8172B3", "#DD8452")):
        values = [len(r.get(key, "").split()) for r in records if r.get(key, "").strip()]
        ax.hist(values or [0], bins=min(40, max(5, len(set(values)))), color=colour)
        ax.set_title(f"{key} length", fontsize=10)
        ax.set_xlabel(unit, fontsize=8)
        ax.set_ylabel("records")
    fig.tight_layout()
    return _save(fig, path)


def _judge_scores(path: Path, distributions: Mapping[str, Any]) -> Path:
    import matplotlib.pyplot as plt

    scores = [str(s) for s in range(1, 6)]
    kept = [distributions["judge_scores"].get(s, 0) for s in scores]
    dropped = [distributions["judge_scores_rejected"].get(s, 0) for s in scores]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(scores, kept, color="#55A868", label="accepted")
    ax.bar(scores, dropped, bottom=kept, color="#C44E52", label="rejected")
    ax.set_title("Judge scores", fontsize=10)
    ax.set_xlabel("score")
    ax.set_ylabel("records")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing glyphs (e.g. Hangul without a CJK font) are cosmetic
        fig.savefig(tmp, dpi=DPI)
    plt.close(fig)
    os.replace(tmp, path)
    return path
