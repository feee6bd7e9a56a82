"""Reports in the workdir: summary.json, results.md, progression.png, TensorBoard scalars."""
from automem_jax.report.paired import (Comparison, compare, final_index, per_seed_percent, render_comparisons,
                                       render_timings, standard_comparisons)
from automem_jax.report.plot import reference_lines, render_png, write_progression_png
from automem_jax.report.summary import (EnvFigure, Row, atomic_write_bytes, atomic_write_text, episode_records,
                                        figures_from_summary, make_row, row_from_json, row_to_json, write_summary)
from automem_jax.report.table import PaperTable, render_table, write_results_md
from automem_jax.report.tensorboard import Scalars


def write_reports(workdir, rows, references=(), *, title="AutoMem", meta=None, notes=(), paper=None,
                  timings=None) -> dict:
    """All three report files (the plot shows the test-seed rows only); returns their paths. results.md and
    summary.json also get every row's paired comparison with v0 and, given `timings` (phase -> counters), where
    the wall time went."""
    from pathlib import Path
    workdir = Path(workdir)
    comparisons = standard_comparisons(rows)
    meta = dict(meta or {}, comparisons=[c.to_dict() for c in comparisons], timings=dict(timings or {}))
    sections = []
    if comparisons:
        final = final_index([r.label for r in rows])
        headline = [c for c in comparisons[:1] if c.a == rows[final].label]  # none when v0 stayed the final system
        sections.append(("Paired comparisons (test seeds)", render_comparisons(comparisons) + "\n\n" +
                         "\n".join(f"- {c.sentence()}" for c in headline)))
    if timings:
        sections.append(("Where the wall time went", render_timings(timings)))
    return {
        "summary": write_summary(workdir / "summary.json", rows, meta=meta, paper=paper),
        "results": write_results_md(workdir / "results.md", rows, title=title, notes=notes, paper=paper,
                                    sections=sections),
        "plot": write_progression_png(workdir / "progression.png", rows, references, title=title),
    }


__all__ = ["Comparison", "compare", "per_seed_percent", "render_comparisons", "render_timings",
           "standard_comparisons", "EnvFigure", "PaperTable", "Row", "Scalars", "atomic_write_bytes", "atomic_write_text", "episode_records",
           "figures_from_summary", "make_row", "reference_lines", "render_png", "render_table", "row_from_json",
           "row_to_json", "write_progression_png", "write_reports", "write_results_md", "write_summary"]
