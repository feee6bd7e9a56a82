"""Experiment schedule + resume with stand-in parts (no model): phases run once, a SIGKILL during training is
survived by rerunning the same command, the final report lists every episode once; config validation errors."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from automem_jax.experiment import Experiment, per_seed_progression
from automem_jax.orchestrate import config as cfg_lib
from automem_jax.orchestrate.parts import Parts, Revision
from automem_jax.orchestrate.schedule import plan

REPO = Path(__file__).resolve().parents[1]

from automem_jax.agent.summary import summarize


@dataclasses.dataclass
class Ep:
    env: str
    task: str
    seed: int
    progression: float
    steps: int = 8
    total_reward: float = 0.0
    status: str = "done"
    invalid_actions: int = 0


class StandIn:
    """Deterministic parts. Spec "quality" and an adapter bonus set each episode's progression; every episode,
    training step and adapter load is journaled so tests can prove nothing ran twice."""

    def __init__(self, config, journal: Path, crash_at_train_step: int | None = None, adapter_bonus: float = 0.1):
        self.config = config
        self.adapter_bonus = adapter_bonus
        self.journal = journal
        self.crash_at = crash_at_train_step
        self.adapters: dict[str, float] = {}

    def log(self, kind: str, **kw):
        with open(self.journal, "a") as f:
            f.write(json.dumps({"kind": kind, **kw}) + "\n")

    @staticmethod
    def load_spec(path):
        fields = dict(line.split(": ", 1) for line in Path(path).read_text().splitlines() if ": " in line)
        return {"version": fields["version"], "quality": float(fields["quality"]), "path": str(path)}

    def rollout(self, call):
        done_file = call.out_dir / "episodes.jsonl"
        finished = {}
        if done_file.exists():
            for line in done_file.read_text().splitlines():
                d = json.loads(line)
                finished[(d["env"], d["seed"])] = Ep(**d)
        out = []
        bonus = self.adapters.get(call.adapter, 0.0) if call.adapter else 0.0
        for env_name in cfg_lib.expand_envs(self.config.envs):
            fam, _, task = env_name.partition(":")
            for seed in call.seeds_for(fam):
                if (fam, seed) in finished:
                    out.append(finished[(fam, seed)])
                    continue
                p = min(1.0, call.spec["quality"] + bonus + (seed % 3) * 0.05)
                ep = Ep(fam, task or fam, seed, p)
                with open(done_file, "a") as f:
                    f.write(json.dumps(dataclasses.asdict(ep)) + "\n")
                self.log("episode", dir=str(call.out_dir), env=fam, seed=seed)
                out.append(ep)
        return out

    def revise(self, incumbent, trace_dirs, history, score_fn):
        assert all(Path(d).exists() for d in trace_dirs), trace_dirs
        n = int(incumbent["version"][1:]) + 1
        history.mkdir(parents=True, exist_ok=True)
        cand_path = history / f"v{n}.yaml"
        cand_path.write_text(f"version: v{n}\nquality: {incumbent['quality'] + 0.2}\n")
        cand = self.load_spec(cand_path)
        seeds = list(cfg_lib.seed_range(self.config, "selection"))
        c = sum(score_fn(cand, seeds, f"v{n}").values()) / len(seeds)
        i = sum(score_fn(incumbent, seeds, incumbent["version"]).values()) / len(seeds)
        self.log("revise", version=f"v{n}")
        if c > i:
            return Revision(True, f"v{n}", str(cand_path), c, i)
        return Revision(False, incumbent["version"], incumbent["path"], c, i)

    def train(self, trace_dirs, round_dir, r):
        round_dir.mkdir(parents=True, exist_ok=True)
        ckpt = round_dir / "checkpoint_step"
        step = int(ckpt.read_text()) if ckpt.exists() else 0
        total = 6
        while step < total:
            if self.crash_at is not None and step == self.crash_at:
                os.kill(os.getpid(), signal.SIGKILL)  # a real kill, mid-training
            step += 1
            self.log("train_step", round=r, step=step)
            ckpt.write_text(str(step))
        adapter = round_dir / "adapter"
        adapter.mkdir(exist_ok=True)
        (adapter / "adapter_config.json").write_text("{}")
        return str(adapter)

    def load_adapter(self, name, path):
        assert Path(path, "adapter_config.json").exists()
        self.adapters[name] = self.adapter_bonus
        self.log("load_adapter", name=name)

    def parts(self) -> Parts:
        return Parts(load_spec=self.load_spec, spec_version=lambda s: s["version"], rollout=self.rollout,
                     revise=self.revise, train=self.train, load_adapter=self.load_adapter, summarize=summarize)


def make_config(tmp: Path, **over):
    spec = tmp / "spec_v0.yaml"
    spec.write_text("version: v0\nquality: 0.1\n")
    base = tmp / "nomemory.yaml"
    base.write_text("version: nomemory\nquality: 0.0\n")
    c = cfg_lib.base_config()
    c.name = "t"
    c.envs = ("crafter", "minihack:MiniHack-MazeWalk-9x9-v0")
    c.spec, c.baseline_spec = str(spec), str(base)
    c.seeds.train, c.seeds.selection, c.seeds.test = (1000, 1100), (42, 45), (100, 104)
    c.episodes.train_per_epoch = 3
    c.structure.revisions, c.proficiency.rounds = 1, 1
    c.report.tensorboard = False
    for k, v in over.items():
        node = c
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return cfg_lib.validate(c)


def run_standin(tmp: str, crash_at: int | None = None, **over) -> dict:
    tmp = Path(tmp)
    config = make_config(tmp, **over)
    standin = StandIn(config, tmp / "journal.jsonl", crash_at)
    return Experiment(config, tmp / "work", standin.parts()).run()


def journal(tmp: Path) -> list[dict]:
    return [json.loads(l) for l in (tmp / "journal.jsonl").read_text().splitlines()]


def test_plan_orders_phases():
    c = cfg_lib.base_config()
    c.structure.revisions, c.proficiency.rounds = 2, 1
    assert [p.name for p in plan(c)] == [
        "epoch000/rollout", "epoch000/structure", "epoch001/rollout", "epoch001/structure",
        "epoch002/rollout", "epoch002/proficiency00", "evaluate", "report"]
    c.schedule, c.epochs = "interleaved", 2
    assert [p.name for p in plan(c)] == [
        "epoch000/rollout", "epoch000/structure", "epoch000/proficiency00",
        "epoch001/rollout", "epoch001/structure", "epoch001/proficiency01", "evaluate", "report"]


def test_full_run_rows_and_reports(tmp_path):
    paths = run_standin(str(tmp_path))
    doc = json.loads(paths["summary"].read_text())
    assert [r["label"] for r in doc["rows"]] == ["baseline", "v0", "v1", "v1+LoRA"]
    v1 = doc["rows"][2]
    assert v1["envs"]["crafter"]["episodes"] == 4 and v1["envs"]["minihack"]["episodes"] == 4
    # spec v1 has quality 0.3; test seeds 100..103 add (seed % 3) * 0.05 = .05,.10,0,.05
    assert v1["envs"]["crafter"]["mean"] == pytest.approx(100 * (0.3 + 0.05))
    assert doc["rows"][3]["average"] == pytest.approx(100 * (0.4 + 0.05))
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"
    assert "| v1+LoRA |" in paths["results"].read_text()
    state = json.loads((tmp_path / "work" / "state.json").read_text())
    assert state["incumbent"]["version"] == "v1" and state["adapter"]["name"] == "t-r00"
    assert state["rounds"]["0"]["accepted"] is True
    assert (tmp_path / "work" / "specs" / "v1.yaml").exists()
    # rerunning a finished experiment repeats nothing
    n = len(journal(tmp_path))
    run_standin(str(tmp_path))
    assert len(journal(tmp_path)) == n


def test_paper_seed_table_beside_the_test_table(tmp_path):
    paths = run_standin(str(tmp_path), **{"report.paper_table": True})
    doc = json.loads(paths["summary"].read_text())
    assert [r["label"] for r in doc["rows"]] == [r["label"] for r in doc["paper"]["rows"]] == \
        ["baseline", "v0", "v1", "v1+LoRA"]
    assert doc["paper"]["seeds"] == {"crafter": list(range(42, 52)), "minihack": list(range(42, 47))}
    v1 = doc["paper"]["rows"][2]
    assert sorted({(e["env"], e["seed"]) for e in v1["episodes"]}) == \
        [("crafter", s) for s in range(42, 52)] + [("minihack", s) for s in range(42, 47)]
    crafter = [0.3 + (s % 3) * 0.05 for s in range(42, 52)]  # the stand-in's progression for spec v1
    assert v1["envs"]["crafter"]["mean"] == pytest.approx(100 * sum(crafter) / 10)
    assert doc["rows"][2]["envs"]["crafter"]["episodes"] == 4  # the test table stays on the test seeds
    md = paths["results"].read_text()
    test_part, paper_part = md.split("## On AutoMem's evaluation seeds")
    assert "held-out test seeds" in test_part and "| v1+LoRA |" in test_part
    assert "crafter 42–51, minihack 42–46 per task" in paper_part and "| v1+LoRA |" in paper_part
    assert "crafter: 3 of these 10 seeds are also selection seeds" in paper_part  # selection = 42..44
    assert "minihack: 3 of these 5 seeds" in paper_part
    n = len(journal(tmp_path))
    run_standin(str(tmp_path), **{"report.paper_table": True})
    assert len(journal(tmp_path)) == n  # resumed: nothing evaluated twice


def test_extra_eval_rows_comparisons_and_wall_times(tmp_path):
    v5 = tmp_path / "handwritten.yaml"
    v5.write_text("version: v5\nquality: 0.5\n")
    paths = run_standin(str(tmp_path), extra_eval_specs=(("crafter_v5", str(v5)),))
    doc = json.loads(paths["summary"].read_text())
    assert [r["label"] for r in doc["rows"]] == ["baseline", "crafter_v5", "v0", "v1", "v1+LoRA"]
    assert doc["rows"][1]["envs"]["crafter"]["mean"] == pytest.approx(100 * (0.5 + 0.05))
    # every row against v0 on the 4 paired test seeds, the final system first; the stand-in's rows differ from v0
    # by a constant, so SE 0 and p 0
    comps = doc["meta"]["comparisons"]
    assert [(c["a"], c["b"]) for c in comps] == [("v1+LoRA", "v0"), ("baseline", "v0"), ("crafter_v5", "v0"),
                                                 ("v1", "v0")]
    assert comps[0]["n"] == 4 and comps[0]["mean_diff"] == pytest.approx(30.0) and comps[0]["wins"] == 4
    assert comps[0]["p_two_sided"] == 0.0
    # wall time per phase with the rollout counters: 3 train seeds x 2 envs per epoch
    t = doc["meta"]["timings"]
    assert list(t) == ["epoch000/rollout", "epoch000/structure", "epoch001/rollout", "epoch001/proficiency00",
                       "evaluate"]
    assert t["epoch000/rollout"]["episodes"] == 6 and t["epoch000/rollout"]["steps"] == 6 * 8
    assert t["evaluate"]["episodes"] == 5 * 8 and all(v["wall_s"] >= 0 and not v["resumed"] for v in t.values())
    md = paths["results"].read_text()
    assert "## Paired comparisons (test seeds)" in md and "v1+LoRA vs v0 on 4 paired seeds" in md
    assert "## Where the wall time went" in md and "| epoch000/rollout | " in md


def test_a_rejected_adapter_is_evaluated_only_when_asked(tmp_path):
    config = make_config(tmp_path, **{"proficiency.accept": "paper", "report.eval_rejected_adapter": True})
    standin = StandIn(config, tmp_path / "journal.jsonl", adapter_bonus=-0.05)  # the adapter hurts: rejected
    doc = json.loads(Experiment(config, tmp_path / "work", standin.parts()).run()["summary"].read_text())
    assert [r["label"] for r in doc["rows"]] == ["baseline", "v0", "v1", "v1+LoRA-rejected"]
    assert doc["meta"]["adapter"] is None and doc["meta"]["rounds"]["0"]["accepted"] is False
    assert doc["rows"][3]["envs"]["crafter"]["mean"] == pytest.approx(100 * (0.3 - 0.05 + 0.05))
    # the final system is v1, not the adapter the rule turned down: it heads the comparisons and is evaluated
    # right after v0
    assert [(c["a"], c["b"]) for c in doc["meta"]["comparisons"]] == [("v1", "v0"), ("baseline", "v0"),
                                                                      ("v1+LoRA-rejected", "v0")]
    order = list(dict.fromkeys(Path(e["dir"]).parent.name for e in journal(tmp_path)
                               if e["kind"] == "episode" and "/eval/" in e["dir"]))
    assert order == ["v0", "v1", "baseline", "v1_LoRA-rejected"]


@pytest.mark.parametrize("pairs,match", [
    ((("v3", "a.yaml"),), "a run's own spec label"),
    ((("baseline", "a.yaml"),), "not 'baseline'"),
    ((("x", "a.yaml"), ("x", "b.yaml")), "unique"),
    ((("x", "a.txt"),), "spec YAML"),
    (("x",), "pair of strings"),
])
def test_extra_eval_specs_validation(pairs, match):
    c = cfg_lib.base_config()
    c.extra_eval_specs = pairs
    with pytest.raises(cfg_lib.ConfigError, match=r"config.extra_eval_specs\[\d\].*" + match):
        cfg_lib.validate(c)


def kill_standin_in_training(tmp_path: Path) -> None:
    """Run the stand-in experiment in a subprocess that SIGKILLs itself during training."""
    code = f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); import test_main as t; " \
           f"t.run_standin({str(tmp_path)!r}, crash_at=3)"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    killed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]


def test_sigkill_during_training_then_resume(tmp_path):
    kill_standin_in_training(tmp_path)
    state = json.loads((tmp_path / "work" / "state.json").read_text())
    assert "epoch001/rollout" in state["completed"] and "epoch001/proficiency00" not in state["completed"]

    paths = run_standin(str(tmp_path))  # the same command again
    j = journal(tmp_path)
    steps = [(e["round"], e["step"]) for e in j if e["kind"] == "train_step"]
    assert steps == [(0, s) for s in range(1, 7)]  # training continued from its checkpoint: no step twice
    episodes = [(e["dir"], e["env"], e["seed"]) for e in j if e["kind"] == "episode"]
    assert len(episodes) == len(set(episodes))  # no episode played twice
    timings = json.loads((tmp_path / "work" / "state.json").read_text())["timings"]
    assert timings["epoch001/proficiency00"]["resumed"] is True and not timings["evaluate"]["resumed"]
    assert sum(e["kind"] == "revise" for e in j) == 1
    doc = json.loads(paths["summary"].read_text())
    for row in doc["rows"]:
        keys = [(e["env"], e["seed"]) for e in row["episodes"]]
        assert len(keys) == len(set(keys)) == 8  # each test episode listed once, 2 envs x 4 seeds


def test_a_killed_run_resumes_after_its_workdir_moved(tmp_path):
    kill_standin_in_training(tmp_path)
    state = json.loads((tmp_path / "work" / "state.json").read_text())
    assert state["incumbent"]["path"] == "specs/v1.yaml"  # stored relative to the workdir
    (tmp_path / "work").rename(tmp_path / "moved")
    config = make_config(tmp_path)
    paths = Experiment(config, tmp_path / "moved", StandIn(config, tmp_path / "journal.jsonl", None).parts()).run()
    episodes = [(e["dir"], e["env"], e["seed"]) for e in journal(tmp_path) if e["kind"] == "episode"]
    assert len(episodes) == len(set(episodes))  # nothing played twice
    assert [r["label"] for r in json.loads(paths["summary"].read_text())["rows"]] == \
        ["baseline", "v0", "v1", "v1+LoRA"]


def test_per_seed_progression_is_balrog_average():
    res = [Ep("crafter", "crafter", 1, 0.2), Ep("crafter", "crafter", 2, 0.4),
           Ep("minihack", "A", 1, 1.0), Ep("minihack", "B", 1, 0.0), Ep("minihack", "A", 2, 1.0),
           Ep("minihack", "B", 2, 1.0)]
    s = per_seed_progression(res)
    assert s == {1: pytest.approx((0.2 + 0.5) / 2), 2: pytest.approx((0.4 + 1.0) / 2)}
    assert sum(s.values()) / 2 == pytest.approx(summarize(res)["average_progress"] / 100)


@pytest.mark.parametrize("field,value,match", [
    ("schedule", "bogus", "config.schedule"),
    ("seeds.test", (40, 50), "config.seeds.test.*overlaps seeds.selection"),
    ("engine.backend", "sglang", "config.engine.url"),
    ("envs", ("crafter", "doom"), "config.envs"),
    ("proficiency.train.lora.rank", 512, "config.proficiency.train.lora.rank"),
    ("seeds.selection", (42, 43), "config.seeds.selection.*>= 2"),
    ("episodes.train_per_epoch", 500, "config.seeds.train"),
    ("engine.max_prefill_tokens", 8, "config.engine.max_prefill_tokens"),
    ("engine.decode_steps", 0, "config.engine.decode_steps"),
    ("structure.accept_rule", "z", "config.structure.accept_rule.*'paper': AutoMem's strictly higher mean"),
    ("structure.alpha", 0.7, "config.structure.alpha.*one-sided significance level"),
    ("proficiency.accept", "better", "config.proficiency.accept.*'t_test', 'paper', 'always'"),
    ("report.references", (("GPT-4o", "average", 32.34),), r"config.report.references\[0\].*not comparable"),
    ("structure.attempts_per_revision", 0, "config.structure.attempts_per_revision: must be >= 1"),
    ("structure.continuations_per_attempt", -1, "config.structure.continuations_per_attempt: must be >= 0"),
    ("structure.proposer.kind", "bogus", "config.structure.proposer.kind: must be one of"),
    ("sampling.top_k", -5, "config.sampling.top_k: must be >= 0"),
    ("proficiency.selection.top_quantile", 5.0, r"config.proficiency.selection.top_quantile must be in \(0, 1\]"),
    ("proficiency.train.max_steps", -3, "config.proficiency.train.max_steps: must be -1"),
    ("proficiency.train.micro_batch_size", 0, "config.proficiency.train.micro_batch_size: must be >= 1"),
    ("proficiency.train.checkpoint_every", 0, "config.proficiency.train.checkpoint_every: must be >= 1"),
    ("proficiency.min_examples", -1, "config.proficiency.min_examples: must be >= 1"),
    ("engine.timeout_s", -1.0, "config.engine.timeout_s"),
    ("envs", ("crafter:bogus",), "config.envs: 'crafter:bogus': unknown task"),
    ("envs", ("minihack:Boxoban",), "config.envs: 'minihack:Boxoban': unknown task"),
])
def test_config_validation_names_field(field, value, match):
    c = cfg_lib.base_config()
    node = c
    *path, last = field.split(".")
    for p in path:
        node = node[p]
    node[last] = value
    if field == "episodes.train_per_epoch":
        c.seeds.train = (1000, 1100)
    with pytest.raises(cfg_lib.ConfigError, match=match):
        cfg_lib.validate(c)


def test_main_cli_rejects_bad_config(tmp_path):
    r = subprocess.run([sys.executable, "-m", "automem_jax", f"--config={REPO / 'configs/quickstart.py'}",
                        f"--workdir={tmp_path}", "--config.seeds.test=(42,50)"],
                       capture_output=True, text=True, timeout=120, cwd=REPO,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 2
    assert "config.seeds.test" in r.stderr and "overlaps" in r.stderr


@pytest.mark.parametrize("name", ["quickstart", "crafter", "minihack", "nethack", "crafter_gpu"])
def test_shipped_configs_validate(name):
    from ml_collections import config_flags  # noqa: F401  (same loader as the CLI)
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", REPO / "configs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = cfg_lib.validate(mod.get_config())
    assert c.name == name
    if name == "quickstart":  # `make demo` ends by saying it is a smoke run and how to get real results
        assert "smoke run" in c.report.footer and "configs/crafter_gpu.py" in c.report.footer
    if name == "crafter_gpu":  # issue 27's scale: >= 1024 concurrent envs, >= 256 paired test episodes per row
        assert c.num_envs >= 1024 and len(cfg_lib.seed_range(c, "test")) >= 256 and c.constrained_phases
        for _, path in c.extra_eval_specs:
            assert (REPO / path).exists()


def test_engine_config_reaches_the_jax_engine(tmp_path, tiny_llama_dir):
    """config.engine's scheduling fields are the JaxEngine's (a field that was dropped on the way would leave the
    engine default silently)."""
    from automem_jax.orchestrate.real_parts import make_engine
    c = make_config(tmp_path, **{"engine.max_batch": 3, "engine.max_seq_len": 96, "engine.decode_steps": 5,
                                 "engine.min_prefill_bucket": 32, "engine.max_prefill_tokens": 4096,
                                 "engine.max_loras": 1, "engine.dtype": "float32",
                                 "sampling.max_new_tokens": 16})
    eng = make_engine(c, str(tiny_llama_dir))
    try:
        assert (eng.max_batch, eng.max_seq_len, eng.decode_steps, eng.max_prefill_tokens) == (3, 96, 5, 4096)
        assert eng.prefill_buckets[0] == 32
    finally:
        eng.close()


def test_v0_and_the_final_system_are_evaluated_first(tmp_path):
    """Their paired test is what a run is for: a run stopped early (a device budget) has it before the other rows."""
    v5 = tmp_path / "handwritten.yaml"
    v5.write_text("version: v5\nquality: 0.5\n")
    paths = run_standin(str(tmp_path), extra_eval_specs=(("crafter_v5", str(v5)),))
    order = list(dict.fromkeys(Path(e["dir"]).parent.name for e in journal(tmp_path)
                               if e["kind"] == "episode" and "/eval/" in e["dir"]))
    assert order == ["v0", "v1_LoRA", "baseline", "crafter_v5", "v1"]
    doc = json.loads(paths["summary"].read_text())
    assert [r["label"] for r in doc["rows"]] == ["baseline", "crafter_v5", "v0", "v1", "v1+LoRA"]  # report order


def test_a_system_scored_on_the_selection_seeds_is_not_scored_again(tmp_path):
    """The structure loop's accepted candidate is the proficiency round's base incumbent: same spec, no adapter,
    same seeds. The round reuses that measurement instead of replaying the seeds (40 s on the H100 run)."""
    config = make_config(tmp_path)

    class SameSpec(StandIn):
        @staticmethod
        def load_spec(path):  # a spec's identity is its content, not where the file lies
            return {k: v for k, v in StandIn.load_spec(path).items() if k != "path"}

    standin = SameSpec(config, tmp_path / "journal.jsonl")
    Experiment(config, tmp_path / "work", standin.parts()).run()
    scored = {Path(e["dir"]).parent.name for e in journal(tmp_path) if e["kind"] == "episode" and "/scores/" in e["dir"]}
    assert scored == {"structure-v0", "structure-v1", "v1+t-r00"}  # no "v1+base": the structure loop's is reused
    state = json.loads((tmp_path / "work" / "state.json").read_text())
    assert state["scores"]["v1+base"] == pytest.approx(state["scores"]["structure-v1"])
    assert state["rounds"]["0"]["incumbent_score"] == pytest.approx(state["scores"]["structure-v1"])
