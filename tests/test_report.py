"""Report files from synthetic results: summary.json fields, results.md rows/values, a valid progression.png."""
import dataclasses
import json
import math

import pytest

from automem_jax import report

from automem_jax.agent.summary import summarize


@dataclasses.dataclass
class Ep:
    env: str
    task: str
    seed: int
    progression: float
    steps: int = 10
    status: str = "done"


def _results(crafter, minihack):
    return [Ep("crafter", "crafter", 100 + i, p) for i, p in enumerate(crafter)] + \
           [Ep("minihack", "MiniHack-MazeWalk-9x9-v0", 100 + i, p) for i, p in enumerate(minihack)]


def _rows():
    return [
        report.make_row("baseline", "baseline", _results([0.0, 0.1], [0.0, 0.0]), summarize),
        report.make_row("v0", "spec", _results([0.1, 0.3], [0.0, 1.0]), summarize),
        report.make_row("v2", "spec", _results([0.2, 0.4], [1.0, 1.0]), summarize),
        report.make_row("v2+LoRA", "lora", _results([0.3, 0.5], [1.0, 1.0]), summarize),
    ]


def test_row_figures_are_balrog_statistics():
    row = _rows()[1]
    assert row.envs["crafter"].mean == pytest.approx(20.0)
    assert row.envs["crafter"].se == pytest.approx(10.0 / math.sqrt(2))  # population std 10 / sqrt(2)
    assert row.envs["minihack"].mean == pytest.approx(50.0)
    assert row.envs["minihack"].se == pytest.approx(50.0 / math.sqrt(2))
    assert row.average == pytest.approx(35.0)
    assert row.average_se == pytest.approx(math.sqrt((10 / math.sqrt(2)) ** 2 + (50 / math.sqrt(2)) ** 2) / 2)
    assert [e["seed"] for e in row.episodes] == [100, 101, 100, 101]


def test_reports_written(tmp_path):
    rows = _rows()
    refs = [("GPT-4o", "crafter", 33.1), ("GPT-4o", "minihack", 10.0), ("X", "nethack", 1.0)]
    paths = report.write_reports(tmp_path, rows, refs, title="test run", meta={"config": "q"})

    doc = json.loads(paths["summary"].read_text())
    assert [r["label"] for r in doc["rows"]] == ["baseline", "v0", "v2", "v2+LoRA"]
    assert doc["best"] == "v2+LoRA"
    assert doc["rows"][3]["kind"] == "lora"
    assert doc["rows"][1]["envs"]["crafter"]["episodes"] == 2
    assert doc["rows"][1]["balrog"]["average_progress"] == pytest.approx(35.0)
    assert report.row_from_json(doc["rows"][2]) == rows[2]  # round trip

    md = paths["results"].read_text().splitlines()
    header = next(l for l in md if l.startswith("| system"))
    assert header == "| system | crafter | minihack | average |"
    table = [l for l in md if l.startswith("| ") and not l.startswith("| system")]
    assert table[0].startswith("| baseline (no memory) | 5.00 ± 3.54 | 0.00 ± 0.00 | 2.50 ±")
    assert table[1] == "| v0 | 20.00 ± 7.07 | 50.00 ± 35.36 | 35.00 ± 18.03 |"
    assert table[3].startswith("| v2+LoRA | 40.00 ± 7.07 | 100.00 ± 0.00 | 70.00 ±")

    png = paths["plot"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_bad_summary_names_missing_field():
    with pytest.raises(ValueError, match="environments"):
        report.figures_from_summary({"average_progress": 1.0})
    with pytest.raises(ValueError, match="kind"):
        report.Row("x", "bogus", {}, 0.0, 0.0)


def test_tensorboard_scalars(tmp_path):
    tb = report.Scalars(tmp_path / "tb")
    tb.log_dict("eval", {"average": 12.5, "crafter": 10.0}, step=3)
    tb.close()
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    report.Scalars(tmp_path / "off", enabled=False).log("x", 1.0, 0)
    assert not (tmp_path / "off").exists()


def test_reference_lines_compare_like_with_like():
    from automem_jax.orchestrate.config import BALROG_REFERENCES
    refs = [("GPT-4o", "crafter", 33.1), ("GPT-4o", "minihack", 10.0), ("GPT-4o", "nethack", 0.4),
            ("Y", "crafter", 50.0)]
    lines = report.reference_lines(refs, ["crafter", "minihack"])
    assert lines == [("GPT-4o", "crafter", 33.1), ("GPT-4o", "minihack", 10.0), ("Y", "crafter", 50.0),
                     ("GPT-4o", "average", pytest.approx((33.1 + 10.0) / 2))]  # Y lacks minihack: no average
    assert report.reference_lines(refs, ["crafter"]) == [("GPT-4o", "crafter", 33.1), ("Y", "crafter", 50.0)]
    with pytest.raises(ValueError, match="BALROG's average is over its 6 envs"):
        report.reference_lines([("GPT-4o", "average", 32.34)], ["crafter"])
    assert all(env != "average" for _, env, _ in BALROG_REFERENCES)


def test_specs_evaluated_beside_the_run_are_lines_not_points_of_the_curve():
    from automem_jax.report.plot import render_png, split_rows
    rows = [report.Row(label=lab, kind=kind, envs={"crafter": report.EnvFigure(mean=m, se=0.1, episodes=4)},
                       average=m, average_se=0.1)
            for lab, kind, m in (("baseline", "baseline", 0.8), ("crafter_v5", "reference", 2.5), ("v0", "spec", 1.8),
                                 ("v1", "spec", 2.1), ("v1+LoRA", "lora", 2.5))]
    curve, flat = split_rows(rows)
    assert [r.label for r in curve] == ["v0", "v1", "v1+LoRA"] and [r.label for r in flat] == ["crafter_v5"]
    assert render_png(rows).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="kind must be one of"):
        report.Row(label="x", kind="handwritten", envs={}, average=0.0, average_se=0.0)
