"""Honest acceptance: a paired test on selection seeds, reporting on disjoint test seeds.

Two rules, selected in the config (`structure.accept_rule`, `proficiency.accept`):
  "t_test" (default): a one-sided paired t-test on the per-seed differences c - i: accept iff
      t = mean(c - i) / (std(c - i, ddof=1) / sqrt(n)) > the (1 - alpha) quantile of Student's t with n - 1
      degrees of freedom (not the normal z: with 10 seeds the 0.9 quantile is 1.38, not 1.28). n >= 2.
  "paper": AutoMem's greedy rule: accept iff the candidate's mean is strictly higher than the incumbent's.
AutoMem then reported on the seeds it had selected on; here numbers for the report come only from *test* seeds,
which the loop never looks at while deciding.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterable, Mapping, Sequence

# score_fn(spec, seeds, tag) -> {seed: progression}; `spec` is a MemorySpec (opaque here).
ScoreFn = Callable[[object, list[int], str], Mapping[int, float]]


def check_disjoint(selection: Iterable[int], test: Iterable[int], train: Iterable[int] = ()) -> None:
    """Raise ValueError naming the overlap if train, selection and test seeds are not pairwise disjoint."""
    sets = {"selection_seeds": set(map(int, selection)), "test_seeds": set(map(int, test)),
            "train_seeds": set(map(int, train))}
    if not sets["selection_seeds"]:
        raise ValueError("selection_seeds is empty: acceptance needs at least 2 selection seeds")
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = sets[a] & sets[b]
            if both:
                shown = sorted(both)[:8]
                raise ValueError(f"{a} and {b} overlap on {len(both)} seed(s) {shown}; "
                                 f"choose disjoint seed ranges so the decision and the report are honest")


ACCEPT_RULES = ("t_test", "paper")


@dataclasses.dataclass(frozen=True)
class Decision:
    accept: bool
    reason: str
    n: int
    mean_candidate: float
    mean_incumbent: float
    mean_diff: float
    se_diff: float  # std(c - i, ddof=1) / sqrt(n); nan below 2 seeds
    rule: str = "t_test"
    alpha: float = float("nan")  # t_test: one-sided significance level
    t: float = float("nan")  # t_test: the statistic mean_diff / se_diff
    t_critical: float = float("nan")  # t_test: Student's t quantile 1 - alpha, n - 1 degrees of freedom
    p_value: float = float("nan")  # t_test: one-sided P(T >= t)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _checked_scores(scores: Mapping[int, float], seeds: Sequence[int], who: str) -> list[float]:
    missing = [s for s in seeds if s not in scores]
    if missing:
        raise ValueError(f"score_fn returned no score for {who} seed(s) {missing[:8]}; it must score every seed")
    out = []
    for s in seeds:
        v = float(scores[s])
        if not math.isfinite(v):
            raise ValueError(f"score_fn returned a non-finite score {v} for {who} seed {s}")
        out.append(v)
    return out


def check_rule(rule: str, alpha: float, field: str = "accept_rule") -> None:
    if rule not in ACCEPT_RULES:
        raise ValueError(f"{field}: unknown rule {rule!r}; use 't_test' (paired t-test) or 'paper' (AutoMem: "
                         "strictly higher mean)")
    if rule == "t_test" and not 0 < alpha < 0.5:
        raise ValueError(f"alpha: {alpha} is not a one-sided significance level in (0, 0.5), e.g. 0.1")


def paired_decision(candidate: Mapping[int, float], incumbent: Mapping[int, float], seeds: Sequence[int],
                    rule: str = "t_test", alpha: float = 0.1) -> Decision:
    """Decide on the candidate from per-seed scores of both systems on the same `seeds` (see the module doc).

    t_test with n < 2 accepts nothing (one lucky episode is not evidence); with zero spread it accepts iff every
    seed improved by the same positive amount."""
    from scipy import stats as sps

    check_rule(rule, alpha)
    seeds = [int(s) for s in seeds]
    c = _checked_scores(candidate, seeds, "candidate")
    i = _checked_scores(incumbent, seeds, "incumbent")
    n = len(seeds)
    diffs = [a - b for a, b in zip(c, i)]
    mean_c, mean_i, mean_d = (sum(x) / n if n else 0.0 for x in (c, i, diffs))
    se = math.sqrt(sum((d - mean_d) ** 2 for d in diffs) / (n - 1) / n) if n >= 2 else float("nan")
    base = dict(n=n, mean_candidate=mean_c, mean_incumbent=mean_i, mean_diff=mean_d, se_diff=se, rule=rule)
    stats = f"candidate {mean_c:.4f} vs incumbent {mean_i:.4f} on {n} selection seeds: mean diff {mean_d:+.4f}"
    if rule == "paper":
        ok = n >= 1 and mean_c > mean_i
        why = "accepted (paper rule: strictly higher mean)" if ok else \
            "Changes Did NOT Improve Performance (paper rule: mean not strictly higher)"
        return Decision(ok, f"{why}: {stats}", **base)
    if n < 2:
        return Decision(False, f"need >= 2 selection seeds for a paired t-test, got {n}", alpha=alpha, **base)
    crit = float(sps.t.ppf(1 - alpha, n - 1))
    t = mean_d / se if se > 0 else (math.inf if mean_d > 0 else -math.inf if mean_d < 0 else 0.0)
    p = float(sps.t.sf(t, n - 1))
    stats += f", SE {se:.4f}, t {t:.3f} vs t_{{{1 - alpha:g}, {n - 1}}} {crit:.3f}, one-sided p {p:.4f}"
    test = dict(alpha=alpha, t=t, t_critical=crit, p_value=p)
    if t > crit:
        return Decision(True, f"accepted (paired t-test): {stats}", **base, **test)
    why = "mean diff <= 0" if mean_d <= 0 else f"t <= t critical (not significant at alpha={alpha:g})"
    return Decision(False, f"Changes Did NOT Improve Performance ({why}): {stats}", **base, **test)


def score_on(score_fn: ScoreFn, spec: object, seeds: Sequence[int], tag: str) -> dict[int, float]:
    """Call score_fn and return {seed: score} restricted to `seeds`, failing loudly on a missing seed."""
    seeds = [int(s) for s in seeds]
    raw = score_fn(spec, list(seeds), tag)
    vals = _checked_scores({int(k): v for k, v in raw.items()}, seeds, tag)
    return dict(zip(seeds, vals))


def mean_se(scores: Mapping[int, float]) -> tuple[float, float]:
    """Mean and SE (population std / sqrt(n), as BALROG reports) of a seed -> score map."""
    vals = [float(v) for v in scores.values()]
    n = len(vals)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(vals) / n
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / n) / math.sqrt(n)
