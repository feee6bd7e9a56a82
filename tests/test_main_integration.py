"""The experiment with the real parts (agent rollouts, structure loop, selection, dataset, LoRA trainer, reports)
on a scripted engine, a tiny corridor env and a tiny LoRA model: every phase runs for real, fast."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agent_fakes import LineWorldEnv
from automem_jax.engine.scripted import ScriptedEngine
from automem_jax.experiment import Experiment
from automem_jax.orchestrate import config as cfg_lib
from automem_jax.orchestrate.real_parts import build_parts
from train_helpers import tiny_cfg, tiny_lora_model

REPO = Path(__file__).resolve().parents[1]


def scripted(req) -> str:
    """Memory phases note the cell; the action walks east and does 'Do' at the end of the corridor."""
    text = " ".join(m["content"] for m in req.messages)
    cells = re.findall(r"cell (\d) of 5", text)
    cell = int(cells[-1]) if cells else 0
    phase = req.rid.split("/")[3] if req.rid and req.rid.count("/") >= 4 else "PLAN"
    if phase == "LOG":
        return f"<|APPEND|>actions_log.txt|at cell {cell}<|END|> <|DONE|>"
    if "Current Observation" in text and "memory" not in text.lower():  # the no-memory baseline
        return "Do" if cell == 4 else "Move East"
    return f"<|ACTION|>{'Do' if cell == 4 else 'Move East'}<|END|>"


class WordChatTokenizer:
    """One token per word (ids < 256), mask on assistant turns: short rows so the tiny trainer runs in seconds."""
    pad_token_id, eos_token_ids, bos_token_id, vocab_size = 0, (1,), None, 256

    def encode_chat_with_mask(self, messages):
        ids, mask = [], []
        for m in messages:
            t = [3 if m["role"] == "assistant" else 2] + [4 + sum(map(ord, w)) % 250 for w in m["content"].split()]
            ids += t + [1]
            mask += [int(m["role"] == "assistant")] * (len(t) + 1)
        return ids, mask


def config():
    c = cfg_lib.base_config()
    c.name = "it"
    c.envs = ("crafter",)
    c.num_envs, c.max_steps = 2, 5
    c.model = "tiny"
    c.spec = str(REPO / "configs/specs/crafter_v0.yaml")
    c.baseline_spec = str(REPO / "configs/specs/nomemory.yaml")
    c.seeds.train, c.seeds.selection, c.seeds.test = (1000, 1010), (40, 43), (100, 103)
    c.episodes.train_per_epoch = 3
    c.structure.revisions = 1
    c.structure.attempts_per_revision, c.structure.continuations_per_attempt = 1, 0
    c.proficiency.rounds, c.proficiency.accept = 1, "always"
    c.proficiency.selection.top_quantile = None
    t = tiny_cfg(seq_len=1024, micro_batch_size=8, grad_accum=1, max_steps=2, loss_chunk=256)
    c.proficiency.train = t
    c.engine.max_lora_rank = 8
    c.report.tensorboard = True
    return cfg_lib.validate(c)


def test_real_parts_end_to_end(tmp_path):
    c = config()
    c.report.paper_table, c.report.paper_seeds.crafter = True, (50, 52)
    engine = ScriptedEngine(scripted)
    parts = build_parts(c, tmp_path, engine=engine, make_env=lambda name, n: LineWorldEnv(n, horizon=5),
                        tokenizer=WordChatTokenizer(), model=lambda mesh: tiny_lora_model(mesh, rank=8))
    paths = Experiment(c, tmp_path / "work", parts).run()
    doc = json.loads(paths["summary"].read_text())
    labels = [r["label"] for r in doc["rows"]]
    assert labels[:2] == ["baseline", "v0"] and labels[-1].endswith("+LoRA")
    for row in doc["rows"]:
        assert row["envs"]["crafter"]["episodes"] == 3
        assert sorted(e["seed"] for e in row["episodes"]) == [100, 101, 102]
    assert [r["label"] for r in doc["paper"]["rows"]] == labels
    assert all(sorted(e["seed"] for e in row["episodes"]) == [50, 51] for row in doc["paper"]["rows"])
    balrog = json.loads((tmp_path / "work" / "eval_paper" / "v0" / "host_0" / "summary.json").read_text())
    assert balrog["client"]["client_name"] == "ScriptedEngine" and balrog["client"]["model_id"] == "tiny"
    assert balrog["agent"]["spec"] == "crafter_v0" and balrog["environments"]["crafter"]["episodes_played"] == 2
    state = json.loads((tmp_path / "work" / "state.json").read_text())
    assert state["completed"][-1] == "report"
    assert (tmp_path / "work" / state["adapter"]["dir"] / "adapter_config.json").exists()  # relative to the workdir
    assert state["adapter"]["name"] in engine.adapters
    assert engine.released == 1  # the engine's KV cache made room for the trainer, once per round
    assert (tmp_path / "work" / "structure").is_dir()
    assert list((tmp_path / "work" / "tensorboard").glob("events.out.tfevents.*"))


def test_rule_teacher_gives_a_lora_row(tmp_path):
    """An agent that never writes a memory op (SmolLM2-135M on the quickstart) gives selection nothing; with
    proficiency.teacher="rule" the round trains on the teacher's traces and the report has a +LoRA row."""
    c = config()
    c.structure.enabled = False
    c.proficiency.teacher = "rule"
    cfg_lib.validate(c)
    engine = ScriptedEngine(lambda req: "I am not sure what to do here.")
    parts = build_parts(c, tmp_path, engine=engine, make_env=lambda name, n: LineWorldEnv(n, horizon=5),
                        tokenizer=WordChatTokenizer(), model=lambda mesh: tiny_lora_model(mesh, rank=8))
    paths = Experiment(c, tmp_path / "work", parts).run()
    doc = json.loads(paths["summary"].read_text())
    assert [r["label"] for r in doc["rows"]] == ["baseline", "v0", "v0+LoRA"]
    round_dir = tmp_path / "work" / "proficiency" / "round00"
    teacher = [json.loads(ln) for ln in (round_dir / "teacher" / "episodes.jsonl").read_text().splitlines()]
    assert sorted(r["seed"] for r in teacher) == [1000, 1001, 1002] and {r["run_id"] for r in teacher} == {
        "teacher-r00"}
    selected = [json.loads(ln) for ln in (round_dir / "selection" / "examples.jsonl").read_text().splitlines()]
    assert selected and all(ex["meta"]["run_id"] == "teacher-r00" for ex in selected)
    assert doc["meta"]["rounds"]["0"]["data"] == "rule teacher"
    assert "rule teacher" in paths["results"].read_text()
    with pytest.raises(cfg_lib.ConfigError, match="proficiency.teacher"):
        c.proficiency.teacher = "llm"
        cfg_lib.validate(c)
