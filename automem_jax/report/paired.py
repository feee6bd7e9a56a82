"""Paired comparisons between evaluated systems, and where a run's wall time went.

Every row plays the same test seeds, so two systems are compared on per-seed differences (a two-sided paired
t-test; a seed's score is the mean progression over the envs/tasks it played). `compare` refuses rows that share no
seed instead of reporting a statistic over nothing.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from collections import defaultdict
from typing import Any, Mapping, Sequence

from automem_jax.report.summary import Row, _field


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


def per_seed_progression(results: Sequence[Any]) -> dict[int, float]:
    """seed -> mean over env families of (mean over that family's episodes of the seed): averaging these over seeds
    gives BALROG's average_progress (as a fraction) when every env plays the same seeds. `results`: EpisodeResult
    objects or episode dicts."""
    by_seed: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        family = str(_field(r, "env")).partition(":")[0]
        by_seed[int(_field(r, "seed"))][family].append(float(_field(r, "progression")))
    return {s: statistics.fmean(statistics.fmean(v) for v in fams.values()) for s, fams in sorted(by_seed.items())}


def per_seed_percent(row: Row) -> dict[int, float]:
    """seed -> the row's per-seed progression (per_seed_progression), percent."""
    return {s: 100.0 * v for s, v in per_seed_progression(row.episodes).items()}


def compare(a: Row, b: Row) -> Comparison:
    """The selection loops' paired t-test (loops.structure.acceptance) on the test seeds, reported two-sided."""
    from automem_jax.loops.structure.acceptance import paired_decision

    sa, sb = per_seed_percent(a), per_seed_percent(b)
    seeds = sorted(set(sa) & set(sb))
    if not seeds:
        raise ValueError(f"rows {a.label!r} and {b.label!r} share no test seed; a paired comparison needs the same "
                         "seeds in both (evaluate both rows on config.seeds.test)")
    d = paired_decision(sa, sb, seeds, "t_test", alpha=0.05)
    p = d.p_value if math.isnan(d.p_value) else min(1.0, 2 * min(d.p_value, 1 - d.p_value))
    return Comparison(a=a.label, b=b.label, n=d.n, mean_a=d.mean_candidate, mean_b=d.mean_incumbent,
                      mean_diff=d.mean_diff, se_diff=d.se_diff, t=d.t, p_two_sided=p,
                      wins=sum(sa[s] > sb[s] for s in seeds), losses=sum(sa[s] < sb[s] for s in seeds))


REJECTED = "-rejected"  # label suffix of a row the selection rule turned down (measured, never the final system)


def final_index(labels: Sequence[str]) -> int:
    """The final system's row: the last one that is not a rejected adapter's (-1 if none)."""
    return max((i for i, lab in enumerate(labels) if not lab.endswith(REJECTED)), default=-1)


def standard_comparisons(rows: Sequence[Row], reference: str = "v0") -> list[Comparison]:
    """Every other row against `reference` (the starting spec), the final system first."""
    ref = next((r for r in rows if r.label == reference), None)
    if ref is None:
        return []
    final = final_index([r.label for r in rows])
    ordered = [rows[final]] * (final >= 0) + [r for i, r in enumerate(rows) if i != final]
    return [compare(r, ref) for r in ordered if r.label != reference]


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
