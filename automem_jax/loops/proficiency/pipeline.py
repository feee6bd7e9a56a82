"""One proficiency round: traces -> selected decisions -> packed dataset -> LoRA -> adapter (hot-loaded).

Every stage leaves its result in `workdir` and is skipped when that result is already there, so a killed
round resumes where it stopped (training itself resumes from its orbax checkpoints):
  workdir/selection/{examples.jsonl, report.json}   workdir/dataset/ (manifest.json last)   workdir/train/
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from automem_jax.agent.trace import read_jsonl
from automem_jax.loops.proficiency.selection import SelectionConfig, select_decisions, write_selection


def run_proficiency_round(trace_paths: Sequence[str | Path], model_dir: str, workdir: str | Path, train_cfg: Any,
                          selection: SelectionConfig | dict | None = None, *, tokenizer: Any = None,
                          engine: Any = None, adapter_name: str | None = None, mesh: Any = None) -> dict:
    """Run (or resume) a round; returns {'selection': report, 'dataset': DatasetInfo, 'train': TrainResult}."""
    from automem_jax.train import DatasetInfo, build_dataset, train_lora

    workdir = Path(workdir)
    sel_dir = workdir / "selection"
    if (sel_dir / "report.json").exists() and (sel_dir / "examples.jsonl").exists():
        report = json.loads((sel_dir / "report.json").read_text())
        examples = read_jsonl(sel_dir / "examples.jsonl")
    else:
        examples, report = select_decisions(trace_paths, selection)
        write_selection(examples, report, sel_dir)
    if not examples:
        raise ValueError(f"proficiency: no decision passed selection (report: {sel_dir / 'report.json'}); "
                         "loosen selection criteria (top_quantile, reward_k) or collect more traces")
    data_dir = workdir / "dataset"
    if (data_dir / "manifest.json").exists():
        info = DatasetInfo.load(data_dir)
    else:
        if tokenizer is None:
            from automem_jax.models.tokenizer import load_tokenizer
            tokenizer = load_tokenizer(model_dir)
        info = build_dataset(examples, tokenizer, data_dir, train_cfg.seq_len,
                             loss_turns=train_cfg.get("loss_turns", "all"))
    result = train_lora(train_cfg, model_dir, data_dir, workdir / "train", engine=engine,
                        adapter_name=adapter_name, mesh=mesh)
    return {"selection": report, "dataset": info, "train": result}
