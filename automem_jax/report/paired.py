"""Paired comparisons between evaluated systems, and where a run's wall time went.

Every row plays the same test seeds, so two systems are compared on per-seed differences (a two-sided paired
t-test; a seed's score is the mean progression over the envs/tasks it played). `compare` refuses rows that share no
seed instead of reporting a statistic over nothing.
"""
from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from typing import Any, Mapping, Sequence

from automem_jax.report.summary import Row


@dataclasses.dataclass(frozen=True)
class Comparison:
    a: str  # label of the system compared (e.g. the final system)
    b: str  # label of the reference (e.g. v0)
    n: int  # paired seeds
    mean_a: float  # percent
    mean_b: float
    mean_diff: float  # a - b, percent points
    se_diff: float  # std(a - b, ddof=1) / sqrt(n)
    t: float
    p_two_sided: float
    wins: int  # seeds where a > b
    losses: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def sentence(self) -> str:
        sig = "significant" if self.p_two_sided < 0.05 else "not significant"
        return (f"{self.a} vs {self.b} on {self.n} paired seeds: {self.mean_a:.2f}% vs {self.mean_b:.2f}%, "
                f"difference {self.mean_diff:+.2f} ± {self.se_diff:.2f} points (t = {self.t:.2f}, two-sided "
                f"p = {self.p_two_sided:.3g}, {sig} at 0.05; {self.wins} seeds better, {self.losses} worse)")


def per_seed_percent(row: Row) -> dict[int, float]:
    """seed -> mean progression (percent) over the episodes of that seed in the row."""
    by_seed: dict[int, list[float]] = defaultdict(list)
    for ep in row.episodes:
        by_seed[int(ep["seed"])].append(100.0 * float(ep["progression"]))
    return {s: sum(v) / len(v) for s, v in by_seed.items()}


def compare(a: Row, b: Row) -> Comparison:
    from scipy import stats as sps

    sa, sb = per_seed_percent(a), per_seed_percent(b)
    seeds = sorted(set(sa) & set(sb))
    if not seeds:
        raise ValueError(f"rows {a.label!r} and {b.label!r} share no test seed; a paired comparison needs the same "
                         "seeds in both (evaluate both rows on config.seeds.test)")
    diffs = [sa[s] - sb[s] for s in seeds]
    n = len(diffs)
    mean_d = sum(diffs) / n
    se = math.sqrt(sum((d - mean_d) ** 2 for d in diffs) / (n - 1) / n) if n >= 2 else float("nan")
    if n < 2 or math.isnan(se):
        t, p = float("nan"), float("nan")
    elif se == 0:
        t, p = (0.0, 1.0) if mean_d == 0 else (math.copysign(math.inf, mean_d), 0.0)
    else:
        t = mean_d / se
        p = float(2 * sps.t.sf(abs(t), n - 1))
    return Comparison(a=a.label, b=b.label, n=n, mean_a=sum(sa[s] for s in seeds) / n,
                      mean_b=sum(sb[s] for s in seeds) / n, mean_diff=mean_d, se_diff=se, t=t, p_two_sided=p,
                      wins=sum(d > 0 for d in diffs), losses=sum(d < 0 for d in diffs))


def standard_comparisons(rows: Sequence[Row], reference: str = "v0") -> list[Comparison]:
    """Every other row against `reference` (the starting spec), the final system (last row) first."""
    ref = next((r for r in rows if r.label == reference), None)
    if ref is None:
        return []
    others = [r for r in rows if r.label != reference]
    ordered = others[-1:] + others[:-1]
    return [compare(r, ref) for r in ordered]


def render_comparisons(comparisons: Sequence[Comparison]) -> str:
    if not comparisons:
        return ""
    lines = ["| system | vs | seeds | difference (points) ± SE | t | p (two-sided) | better / worse seeds |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for c in comparisons:
        lines.append(f"| {c.a} | {c.b} | {c.n} | {c.mean_diff:+.2f} ± {c.se_diff:.2f} | {c.t:.2f} | "
                     f"{c.p_two_sided:.3g} | {c.wins} / {c.losses} |")
    return "\n".join(lines)


def render_timings(timings: Mapping[str, Mapping[str, Any]]) -> str:
    """Phase -> {wall_s, episodes, steps, model_calls, fallbacks, ...} as a table (experiment.Experiment records
    these in state.json; a phase resumed after a kill counts only the run that finished it)."""
    if not timings:
        return ""
    lines = ["| phase | wall s | episodes | actions | actions/s | model calls | calls/s | fallback actions |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    total = 0.0
    for name, t in timings.items():
        wall = float(t.get("wall_s", 0.0))
        total += wall
        steps, calls = int(t.get("steps", 0)), int(t.get("model_calls", 0))
        rate = lambda x: f"{x / wall:.1f}" if wall > 0 and x else "–"  # noqa: E731
        fb = f"{100 * int(t.get('fallbacks', 0)) / steps:.1f}%" if steps else "–"
        mark = " (resumed)" if t.get("resumed") else ""
        lines.append(f"| {name}{mark} | {wall:.1f} | {int(t.get('episodes', 0)) or '–'} | {steps or '–'} | "
                     f"{rate(steps)} | {calls or '–'} | {rate(calls)} | {fb} |")
    lines.append(f"| total | {total:.1f} | | | | | | |")
    return "\n".join(lines)
