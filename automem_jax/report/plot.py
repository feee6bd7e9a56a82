"""progression.png: AutoMem's figure — progression per spec revision, then +train (LoRA), one panel per env
(plus the average when several envs run), with horizontal reference lines (e.g. the BALROG leaderboard).

References are per env only. BALROG's leaderboard "average" is over its 6 environments, so it is never drawn next
to our average: the average panel gets, per reference label, the mean of that label's values over exactly the envs
the run plays (only labels with a value for each of them)."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: no display on CPU boxes or TPU VMs
import matplotlib.pyplot as plt  # noqa: E402

from automem_jax.report.summary import Row, atomic_write_bytes  # noqa: E402
from automem_jax.report.table import env_columns  # noqa: E402


def _series(rows: Sequence[Row], panel: str) -> tuple[list[str], list[float], list[float]]:
    labels, means, ses = [], [], []
    for r in rows:
        if panel == "average":
            labels.append(r.label), means.append(r.average), ses.append(r.average_se)
        elif panel in r.envs:
            labels.append(r.label), means.append(r.envs[panel].mean), ses.append(r.envs[panel].se)
    return labels, means, ses


def split_rows(rows: Sequence[Row]) -> tuple[list[Row], list[Row]]:
    """(AutoMem's curve: revisions then +train in run order, the specs evaluated beside it: drawn as lines)."""
    return ([r for r in rows if r.kind in ("spec", "lora")], [r for r in rows if r.kind == "reference"])


def reference_lines(references: Sequence[tuple[str, str, float]], envs: Sequence[str]
                    ) -> list[tuple[str, str, float]]:
    """(label, panel, value): the per-env references of the run's envs, plus (label, "average", mean over the run's
    envs) for every label that has all of them, when the run plays several envs."""
    for lab, env, _ in references:
        if env == "average":
            raise ValueError(f"reference {lab!r}: an 'average' reference is not comparable (BALROG's average is over "
                             "its 6 envs); give per-env values and the plot averages them over the run's envs")
    out = [(lab, env, float(val)) for lab, env, val in references if env in envs]
    if len(envs) > 1:
        for lab in dict.fromkeys(lab for lab, _, _ in references):
            vals = {env: float(val) for l2, env, val in references if l2 == lab}
            if all(e in vals for e in envs):
                out.append((lab, "average", sum(vals[e] for e in envs) / len(envs)))
    return out


def render_png(rows: Sequence[Row], references: Sequence[tuple[str, str, float]] = (), *,
               title: str = "AutoMem progression") -> bytes:
    envs = env_columns(rows)
    panels = envs + (["average"] if len(envs) > 1 else [])
    lines = reference_lines(references, envs)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8), squeeze=False)
    line_styles = ["--", ":", "-."]
    curve, flat = split_rows(rows)
    base = [r for r in rows if r.kind == "baseline"]
    for ax, panel in zip(axes[0], panels):
        labels, means, ses = _series(curve, panel)
        xs = list(range(len(labels)))
        ax.errorbar(xs, means, yerr=ses, marker="o", capsize=3, color="tab:blue", label="AutoMem (ours)")
        if base:
            _, bm, _ = _series(base, panel)
            if bm:
                ax.axhline(bm[0], color="gray", linestyle="-", linewidth=1, label="no memory")
        for i, r in enumerate(flat):  # specs beside the run: their mean ± SE as a band, not a point of the curve
            _, fm, fs = _series([r], panel)
            if fm:
                color = plt.cm.tab10((i + 5) % 10)
                ax.axhline(fm[0], color=color, linestyle="--", linewidth=1, label=r.label)
                ax.axhspan(fm[0] - fs[0], fm[0] + fs[0], color=color, alpha=0.12, linewidth=0)
        refs = [(lab, val) for lab, env, val in lines if env == panel]
        for i, (lab, val) in enumerate(refs):
            ax.axhline(val, linestyle=line_styles[i % len(line_styles)], linewidth=1,
                       color=plt.cm.tab10((i + 2) % 10), label=lab)
        ax.set_xticks(xs, labels, rotation=30, ha="right")
        ax.set_title(panel)
        ax.set_ylabel("progression (%)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_progression_png(path: str | os.PathLike, rows: Sequence[Row],
                          references: Sequence[tuple[str, str, float]] = (), *, title: str = "AutoMem progression"
                          ) -> Path:
    return atomic_write_bytes(path, render_png(rows, references, title=title))
