"""Structure loop: proposer subprocesses, validation, paired acceptance on selection seeds, test-only reporting,
resumable history."""
from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from structure_traces import CRAFTER_V0, write_rollout  # noqa: E402

from automem_jax import memory  # noqa: E402
from automem_jax.loops.structure import (Limits, ProposerConfig, StructureConfig, StructureLoop,  # noqa: E402
                                         check_disjoint, paired_decision)
from automem_jax.loops.structure.proposers import parse_reply  # noqa: E402

SELECTION = tuple(range(100, 112))
TEST = tuple(range(200, 206))
TRAIN = tuple(range(0, 10))


# ----- helpers -----
class RecordingScore:
    """score = base + bonus if the spec has an upsert_keyed op, + per-seed noise; records every call."""

    def __init__(self, bonus: float = 0.2, fail_on: str | None = None):
        self.calls: list[tuple[str, list[int]]] = []
        self.bonus, self.fail_on = bonus, fail_on

    def __call__(self, spec, seeds, tag):
        self.calls.append((tag, list(seeds)))
        if self.fail_on and self.fail_on in tag:
            raise _Killed(tag)
        good = any(o.semantics == "upsert_keyed" for o in spec.ops)
        return {s: 0.3 + (self.bonus if good else 0.0) + 0.01 * (s % 3) for s in seeds}

    def seeds_seen(self) -> set[int]:
        return {s for _, seeds in self.calls for s in seeds}


class _Killed(BaseException):
    """Stands in for a kill: not an Exception, so the loop does not catch it as a candidate failure."""


def script(tmp: Path, body: str, name: str = "propose.py") -> str:
    """Write a proposer script and return the command line that runs it in the workspace."""
    p = tmp / name
    p.write_text(textwrap.dedent(body))
    return f"{sys.executable} {p}"


ADD_UPSERT = """
    import yaml
    s = yaml.safe_load(open("spec.yaml"))
    s["ops"].append({"name": "UPSERT_MAP", "semantics": "upsert_keyed", "file": "map_notes.txt",
                     "key_grammar": "x,y|description"})
    s["phases"]["LOG"]["ops"].append("UPSERT_MAP")
    yaml.safe_dump(s, open("spec.yaml", "w"), sort_keys=False)
    open("analysis.md", "w").write("map notes repeat; add a keyed upsert\\n")
"""

DROP_COUNT = """
    import yaml
    s = yaml.safe_load(open("spec.yaml"))
    s["ops"] = [o for o in s["ops"] if o["name"] != "COUNT"]
    for p in s["phases"].values():
        p["ops"] = [o for o in p["ops"] if o != "COUNT"]
    yaml.safe_dump(s, open("spec.yaml", "w"), sort_keys=False)
    open("analysis.md", "w").write("COUNT is never used\\n")
"""


def make_loop(tmp: Path, command: str | None = None, score=None, kind: str = "command", timeout_s: float = 30.0,
              attempts: int = 1, continuations: int = 0, **kw) -> tuple[StructureLoop, RecordingScore]:
    score = score or RecordingScore()
    proposer = ProposerConfig(kind=kind, command=command or "", timeout_s=timeout_s)
    cfg = StructureConfig(proposer=proposer, selection_seeds=SELECTION, test_seeds=TEST, train_seeds=TRAIN,
                          attempts_per_revision=attempts, continuations_per_attempt=continuations, **kw)
    return StructureLoop(cfg, tmp / "hist", score), score


@pytest.fixture
def rollout(tmp_path):
    return write_rollout(tmp_path / "roll")


@pytest.fixture
def incumbent():
    return memory.load_spec(CRAFTER_V0)


# ----- acceptance statistics -----
def test_paired_decision_accepts_only_significant_gains():
    seeds = [1, 2, 3, 4]
    inc = {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4}
    d = paired_decision({s: v + 0.1 for s, v in inc.items()}, inc, seeds)
    assert d.accept and d.mean_diff == pytest.approx(0.1) and d.se_diff == pytest.approx(0.0, abs=1e-12)
    noisy = {1: 0.5, 2: 0.0, 3: 0.5, 4: 0.1}  # diffs 0.4, -0.2, 0.2, -0.3: mean 0.025, SE ~0.165
    d = paired_decision(noisy, inc, seeds)
    assert not d.accept and d.mean_diff == pytest.approx(0.025)
    assert d.se_diff == pytest.approx(0.16520, rel=1e-3) and "not significant" in d.reason
    assert not paired_decision({1: 0.0, 2: 0.1, 3: 0.2, 4: 0.3}, inc, seeds).accept  # worse
    assert not paired_decision({1: 1.0}, {1: 0.0}, [1]).accept  # one seed is no evidence
    with pytest.raises(ValueError, match="no score for candidate seed"):
        paired_decision({1: 0.0}, inc, seeds)
    with pytest.raises(ValueError, match="unknown rule 'z'"):
        paired_decision(noisy, inc, seeds, rule="z")


def test_t_test_uses_student_t_with_n_minus_1_df_and_paper_rule_is_strictly_higher_mean():
    from scipy import stats as sps
    seeds = list(range(10))
    inc = {s: 0.3 for s in seeds}
    # diffs 0.0444 +- 0.1: sample sd 0.1054 -> SE 0.0333, t 1.333, between z_0.9 (1.282) and t_0.9,9 (1.383)
    diffs = [0.4 / 9 + 0.1 * (-1) ** k for k in range(10)]
    cand = {s: inc[s] + d for s, d in zip(seeds, diffs)}
    d = paired_decision(cand, inc, seeds, "t_test", 0.1)
    assert d.t == pytest.approx(sps.ttest_rel(list(cand.values()), list(inc.values())).statistic)
    assert d.p_value == pytest.approx(sps.ttest_rel(list(cand.values()), list(inc.values()),
                                                    alternative="greater").pvalue)
    assert d.t_critical == pytest.approx(1.3830, abs=1e-4) and 1.2816 < d.t < d.t_critical
    assert not d.accept  # a normal-z gate at the same level (1.2816) would have accepted
    assert paired_decision(cand, inc, seeds, "t_test", 0.15).accept  # t_0.85,9 = 1.100
    paper = paired_decision(cand, inc, seeds, "paper")
    assert paper.accept and paper.rule == "paper" and "strictly higher" in paper.reason
    tie = paired_decision(inc, inc, seeds, "paper")
    assert not tie.accept and "Changes Did NOT Improve Performance" in tie.reason
    assert paired_decision({1: 0.6}, {1: 0.5}, [1], "paper").accept  # the paper rule needs no spread
    with pytest.raises(ValueError, match="alpha"):
        paired_decision(cand, inc, seeds, "t_test", 0.7)


def test_seed_sets_must_be_disjoint(tmp_path):
    check_disjoint([1, 2], [3, 4], [5])
    with pytest.raises(ValueError, match="selection_seeds and test_seeds overlap"):
        check_disjoint([1, 2], [2, 3])
    with pytest.raises(ValueError, match="selection_seeds and train_seeds overlap"):
        check_disjoint([1, 2], [3], [1])
    with pytest.raises(ValueError, match="overlap"):
        StructureLoop(StructureConfig(selection_seeds=(1, 2), test_seeds=(2, 9)), tmp_path, RecordingScore())


# ----- command proposer: accepted / rejected on a known-better spec -----
def test_command_proposer_better_spec_is_accepted(tmp_path, rollout, incumbent):
    loop, score = make_loop(tmp_path, script(tmp_path, ADD_UPSERT))
    v0 = (tmp_path / "hist/specs/v0.yaml")
    res = loop.run(incumbent, [rollout])
    assert res.accepted and res.version == 1 and res.revision == 1
    assert res.spec.op("UPSERT_MAP").semantics == "upsert_keyed" and res.spec.parent == 0
    assert memory.load_spec(tmp_path / "hist/specs/v1.yaml").to_yaml() == res.spec.to_yaml()
    assert memory.load_spec(v0).to_yaml() == incumbent.to_yaml()  # incumbent untouched
    rec = json.loads((tmp_path / "hist/history.json").read_text())["attempts"][0]
    assert rec["status"] == "accepted" and rec["new_version"] == 1
    assert rec["decision"]["mean_diff"] == pytest.approx(0.2) and "op UPSERT_MAP added" in rec["structural_changes"]
    adir = tmp_path / "hist/attempts/01_1"
    for f in ("proposal.yaml", "analysis.md", "diff.txt", "scores.json", "decision.json", "proposer.log",
              "workspace/op_registry.md", "workspace/rules.md", "workspace/env_context.md", "workspace/digest.md",
              "workspace/episode_stats.jsonl", "workspace/history.md", "workspace/traces.md"):
        assert (adir / f).is_file(), f
    assert "+- name: UPSERT_MAP" in (adir / "diff.txt").read_text()
    # Decisions saw selection seeds only; the report sees test seeds only.
    assert score.seeds_seen() == set(SELECTION)
    assert [t for t, _ in score.calls] == ["v0_selection", "01_1_candidate"]
    rep = loop.report()
    assert rep["version"] == 1 and sorted(rep["scores"]) == sorted(TEST)
    assert score.calls[-1] == ("v1_test", list(TEST))
    assert not set(score.calls[-1][1]) & set(SELECTION)


def test_command_proposer_worse_spec_is_rejected(tmp_path, rollout, incumbent):
    loop, score = make_loop(tmp_path, script(tmp_path, DROP_COUNT), score=RecordingScore(bonus=0.0))
    res = loop.run(incumbent, [rollout])
    assert not res.accepted and res.version == 0 and res.spec.to_yaml() == incumbent.to_yaml()
    assert "Changes Did NOT Improve Performance" in res.reason
    assert not (tmp_path / "hist/specs/v1.yaml").exists()
    assert score.seeds_seen() == set(SELECTION)


# ----- invalid proposals are rejected with the reason, incumbent untouched -----
BAD = {
    "invalid_yaml": ("open('spec.yaml','w').write('ops: [unclosed\\n  : - {')\nopen('analysis.md','w').write('x')",
                     "yaml", "not valid YAML"),
    "unknown_semantics": ("""
        import yaml
        s = yaml.safe_load(open('spec.yaml'))
        s['ops'].append({'name': 'TELEPORT', 'semantics': 'teleport'})
        yaml.safe_dump(s, open('spec.yaml', 'w'))
        open('analysis.md', 'w').write('x')""", "schema", "unknown semantics 'teleport'"),
    "unknown_op_in_phase": ("""
        import yaml
        s = yaml.safe_load(open('spec.yaml'))
        s['phases']['LOG']['ops'].append('FLY')
        yaml.safe_dump(s, open('spec.yaml', 'w'))
        open('analysis.md', 'w').write('x')""", "schema", "unknown op 'FLY'"),
    "ten_mb_prompt": ("""
        import yaml
        s = yaml.safe_load(open('spec.yaml'))
        s['phases']['PLAN']['template'] += 'x' * (10 << 20)
        s['ops'] = [o for o in s['ops'] if o['name'] != 'COUNT']
        import json; json.dump(s, open('spec.yaml', 'w'))  # JSON is YAML, and fast to write
        open('analysis.md', 'w').write('x')""", "size", "> max_spec_bytes"),
    "nothing_written": ("pass", "output", "did not write spec.yaml"),
    "wording_only": ("""
        import yaml
        s = yaml.safe_load(open('spec.yaml'))
        s['phases']['PLAN']['template'] += '\\nThink harder.'
        s['files'][0]['purpose'] = 'where things are'
        yaml.safe_dump(s, open('spec.yaml', 'w'))
        open('analysis.md', 'w').write('x')""", "structure", "no structural change"),
    "prompt_hides_op": ("""
        import yaml
        s = yaml.safe_load(open('spec.yaml'))
        s['ops'].append({'name': 'NOTE_MAP', 'semantics': 'append', 'file': 'map_notes.txt'})
        s['phases']['PLAN']['ops'].append('NOTE_MAP')
        s['phases']['PLAN']['read_only'] = False
        s['phases']['PLAN']['template'] = s['phases']['PLAN']['template'].replace('{ops_help}', 'SEARCH READ TAIL')
        yaml.safe_dump(s, open('spec.yaml', 'w'))
        open('analysis.md', 'w').write('x')""", "rules", "'NOTE_MAP']; name them in the template"),
    "no_analysis": ("""
        import yaml
        s = yaml.safe_load(open('spec.yaml'))
        s['phases']['LOG']['max_iterations'] = 4
        yaml.safe_dump(s, open('spec.yaml', 'w'))""", "output", "no analysis.md"),
    "crash": ("raise SystemExit(3)", "proposer", "exited with code 3"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_invalid_proposal_rejected_with_reason(tmp_path, rollout, incumbent, case):
    body, stage, fragment = BAD[case]
    loop, score = make_loop(tmp_path, script(tmp_path, body))
    res = loop.run(incumbent, [rollout])
    assert not res.accepted and res.spec.to_yaml() == incumbent.to_yaml()
    rec = json.loads((tmp_path / "hist/history.json").read_text())["attempts"][0]
    assert rec["status"] == "rejected" and rec["stage"] == stage, rec
    assert fragment in rec["reason"], rec["reason"]
    assert fragment in (tmp_path / "hist/history.md").read_text()
    assert score.calls == []  # nothing invalid is ever scored
    assert sorted(p.name for p in (tmp_path / "hist/specs").iterdir()) == ["v0.yaml"]
    assert (tmp_path / "hist/specs/v0.yaml").read_text() == incumbent.to_yaml()


def test_hanging_proposer_is_killed_with_its_process_group(tmp_path, rollout, incumbent):
    body = """
        import os, subprocess, time
        open('pgid.txt', 'w').write(str(os.getpgid(0)))
        subprocess.Popen(['sleep', '60'])  # a child in the same group must die too
        time.sleep(60)
    """
    loop, _ = make_loop(tmp_path, script(tmp_path, body), timeout_s=1.5)
    t0 = time.monotonic()
    res = loop.run(incumbent, [rollout])
    assert time.monotonic() - t0 < 20
    rec = res.attempts[0]
    assert rec["stage"] == "proposer" and "time limit (1.5s)" in rec["reason"] and rec["proposer"]["timed_out"]
    pgid = int((tmp_path / "hist/attempts/01_1/workspace/pgid.txt").read_text())
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


# ----- continuation + resume -----
CONTINUE_FIXES = """
    import os, yaml
    open(os.path.join(os.path.dirname(__file__), 'runs.txt'), 'a').write(os.getcwd() + '\\n')
    if not os.path.exists('continuation.md'):
        open('spec.yaml', 'w').write('ops: [')
        open('analysis.md', 'w').write('first try')
    else:
        assert 'not valid YAML' in open('continuation.md').read()
        assert open('previous/spec.yaml').read() == 'ops: ['
        s = yaml.safe_load(open('spec.yaml'))
        s['ops'].append({'name': 'UPSERT_MAP', 'semantics': 'upsert_keyed', 'file': 'map_notes.txt'})
        s['phases']['LOG']['ops'].append('UPSERT_MAP')
        yaml.safe_dump(s, open('spec.yaml', 'w'))
        open('analysis.md', 'w').write('fixed the YAML')
"""


def test_continuation_gets_the_rejection_reason(tmp_path, rollout, incumbent):
    loop, _ = make_loop(tmp_path, script(tmp_path, CONTINUE_FIXES), attempts=1, continuations=1)
    res = loop.run(incumbent, [rollout])
    assert res.accepted and [r["id"] for r in res.attempts] == ["01_1", "01_1c1"]
    assert res.attempts[0]["stage"] == "yaml" and res.attempts[1]["continuation"] == 1
    assert "Changes Did NOT Improve Performance" in (tmp_path / "hist/attempts/01_1c1/workspace/continuation.md"
                                                     ).read_text()


def test_resume_after_kill_repeats_nothing(tmp_path, rollout, incumbent):
    cmd = script(tmp_path, ADD_UPSERT.replace('import yaml', 'import yaml, os\n    open(os.path.join('
                                              f'{str(tmp_path)!r}, "runs.txt"), "a").write("x")'))
    loop, _ = make_loop(tmp_path, cmd, score=RecordingScore(fail_on="_candidate"))
    with pytest.raises(_Killed):
        loop.run(incumbent, [rollout])  # "killed" while scoring the candidate
    assert (tmp_path / "runs.txt").read_text() == "x"
    loop2, score2 = make_loop(tmp_path, cmd)
    res = loop2.run(incumbent, [rollout])
    assert res.accepted and res.version == 1
    assert (tmp_path / "runs.txt").read_text() == "x"  # the validated proposal was reused, not re-proposed
    assert [t for t, _ in score2.calls] == ["01_1_candidate"]  # incumbent scores came from the cache
    # Pinning the finished revision returns its record without running anything.
    again = loop2.run(incumbent, [rollout], revision=1)
    assert again.accepted and again.version == 1 and (tmp_path / "runs.txt").read_text() == "x"
    # A rerun continues after the last recorded attempt: revision 2 on top of v1.
    res2 = loop2.run(res.spec, [rollout])
    assert res2.revision == 2 and [r["id"] for r in res2.attempts] == ["02_1"]
    assert json.loads((tmp_path / "hist/history.json").read_text())["attempts"][0]["id"] == "01_1"


def test_revision_budget(tmp_path, rollout, incumbent):
    loop, _ = make_loop(tmp_path, script(tmp_path, DROP_COUNT), score=RecordingScore(bonus=0.0),
                        max_revisions=2)
    results = loop.run_revisions(incumbent, lambda spec: [rollout])
    assert [r.revision for r in results] == [1, 2] and not any(r.accepted for r in results)
    assert loop.run(incumbent, [rollout]).budget_exhausted


# ----- heuristic proposer -----
def test_heuristic_proposer_makes_valid_structural_changes(tmp_path, incumbent):
    rollout = write_rollout(tmp_path / "roll", steps=10)
    loop, _ = make_loop(tmp_path, kind="heuristic", score=RecordingScore(bonus=0.0), attempts=3)
    res = loop.run(incumbent, [rollout])
    assert not res.accepted and len(res.attempts) == 3
    keys = []
    for rec in res.attempts:
        assert rec["stage"] == "acceptance", rec  # every proposal passed validation
        assert rec["structural_changes"]
        keys.append(tuple(rec["proposer_meta"]["mutations"]))
    assert len(set(keys)) == 3  # retries explore different mutations
    # Strongest evidence first: map_notes.txt is appended with near-duplicates -> keyed upsert on it.
    first = memory.load_spec(tmp_path / "hist/attempts/01_1/proposal.yaml")
    ups = [o for o in first.ops if o.semantics == "upsert_keyed"]
    assert [o.file for o in ups] == ["map_notes.txt"] and ups[0].name in first.phase("LOG").ops
    analysis = (tmp_path / "hist/attempts/01_1/analysis.md").read_text()
    assert "near-duplicates" in analysis
    stats = [json.loads(l) for l in (tmp_path / "hist/attempts/01_1/workspace/episode_stats.jsonl").open()]
    assert stats[0]["redundant_writes"] == 8 and stats[0]["empty_searches"] == 9
    assert stats[0]["unchanged_obs_max_streak"] == 2 and stats[0]["op_counts"] == {"APPEND": 9, "SEARCH": 9}


def test_heuristic_accepted_when_scores_favour_it(tmp_path, incumbent):
    rollout = write_rollout(tmp_path / "roll")
    loop, score = make_loop(tmp_path, kind="heuristic")
    res = loop.run(incumbent, [rollout])
    assert res.accepted and any(o.semantics == "upsert_keyed" for o in res.spec.ops)
    assert score.seeds_seen() == set(SELECTION)


# ----- openai proposer against a local fake endpoint -----
def test_openai_proposer_parses_yaml_reply(tmp_path, rollout, incumbent):
    import http.server
    import threading

    spec = yaml.safe_load(incumbent.to_yaml())
    spec["phases"]["LOG"]["max_iterations"] = 5
    reply = "Analysis: LOG never needs 10 turns.\n\n```yaml\n" + yaml.safe_dump(spec) + "```\n"
    seen = {}

    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            seen["path"] = self.path
            seen["body"] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen["auth"] = self.headers.get("Authorization")
            out = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        os.environ["STRUCTURE_TEST_KEY"] = "sk-test"
        proposer = ProposerConfig(kind="openai", model="m", base_url=f"http://127.0.0.1:{srv.server_port}/v1",
                                  api_key_env="STRUCTURE_TEST_KEY", timeout_s=60)
        cfg = StructureConfig(proposer=proposer, selection_seeds=SELECTION, test_seeds=TEST,
                              attempts_per_revision=1, continuations_per_attempt=0)
        res = StructureLoop(cfg, tmp_path / "hist", RecordingScore(bonus=0.0)).run(incumbent, [rollout])
    finally:
        srv.shutdown()
        os.environ.pop("STRUCTURE_TEST_KEY", None)
    assert seen["path"] == "/v1/chat/completions" and seen["auth"] == "Bearer sk-test"
    user = seen["body"]["messages"][1]["content"]
    assert "Hard constraints" in user and "=== spec.yaml" in user and "Trajectory digest" in user
    rec = res.attempts[0]
    assert rec["stage"] == "acceptance" and rec["structural_changes"] == ["phase LOG: max_iterations 10 -> 5"]
    assert "LOG never needs" in (tmp_path / "hist/attempts/01_1/analysis.md").read_text()


def test_parse_reply():
    text = "thoughts\n```python\nx=1\n```\n```yaml\nname: a\nops: []\n```\nbye"
    spec, analysis = parse_reply(text)
    assert yaml.safe_load(spec) == {"name": "a", "ops": []} and "thoughts" in analysis and "ops" not in analysis
    with pytest.raises(ValueError, match="no fenced"):
        parse_reply("no yaml here")


def test_config_from_mapping(tmp_path):
    cfg = StructureConfig.coerce({"proposer": {"kind": "heuristic", "timeout_s": 5}, "selection_seeds": [1, 2],
                                  "test_seeds": [3], "limits": {"max_prompt_bytes": 100}, "alpha": 0.05})
    assert cfg.proposer.timeout_s == 5 and cfg.limits == Limits(max_prompt_bytes=100) and cfg.selection_seeds == (1, 2)
    with pytest.raises(ValueError, match="unknown field"):
        StructureConfig.coerce({"selection_seed": [1]})
    with pytest.raises(ValueError, match="proposer.command is empty"):
        ProposerConfig(kind="command")


# ----- local proposer: our own engine in the subprocess (a tiny random model cannot write a spec) -----
@pytest.mark.slow  # compiles the JAX engine in the proposer subprocess: minutes on a shared CPU
def test_local_proposer_runs_engine_and_rejects_garbage(tmp_path, rollout, incumbent):
    from automem_jax.models import loader
    from automem_jax.models.testing import save_tiny_hf_model

    if not hasattr(loader, "load_tokenizer"):
        pytest.skip("models.loader.load_tokenizer has not landed yet (the JAX engine needs it)")
    model_dir = save_tiny_hf_model(tmp_path / "tiny")
    proposer = ProposerConfig(kind="local", model=str(model_dir), max_tokens=8, max_seq_len=512, timeout_s=240,
                              temperature=0.0)
    cfg = StructureConfig(proposer=proposer, selection_seeds=SELECTION, test_seeds=TEST,
                          attempts_per_revision=1, continuations_per_attempt=0)
    res = StructureLoop(cfg, tmp_path / "hist", RecordingScore()).run(incumbent, [rollout])
    rec = res.attempts[0]
    assert rec["stage"] == "proposer" and "no fenced ```yaml block" in rec["reason"], rec["reason"]
    assert (tmp_path / "hist/attempts/01_1/workspace/reply.md").is_file()  # the raw reply is kept for inspection
    assert not res.accepted and res.spec.to_yaml() == incumbent.to_yaml()


def test_proposer_touching_the_incumbent_is_rejected_and_undone(tmp_path, rollout, incumbent):
    body = f"""
        import os, stat
        p = {str(tmp_path / 'hist/specs/v0.yaml')!r}
        os.chmod(p, 0o644)
        open(p, 'w').write('name: hijacked')
        open('analysis.md', 'w').write('x')
    """
    loop, score = make_loop(tmp_path, script(tmp_path, body))
    res = loop.run(incumbent, [rollout])
    assert res.attempts[0]["stage"] == "safety" and "outside its workspace" in res.attempts[0]["reason"]
    assert (tmp_path / "hist/specs/v0.yaml").read_text() == incumbent.to_yaml() and score.calls == []


@pytest.mark.parametrize("spec_file", ["crafter_v0.yaml", "minihack_v0.yaml", "nethack_v0.yaml"])
def test_every_heuristic_mutation_is_valid_and_structural(tmp_path, spec_file):
    """Each candidate edit the heuristic can make, applied alone to each shipped v0 spec, passes validation."""
    from automem_jax.loops.structure import heuristic, validation, workspace

    inc = memory.load_spec(CRAFTER_V0.parent / spec_file)
    rollout = write_rollout(tmp_path / "roll", steps=12)
    agg = workspace.build_workspace(tmp_path / "ws", incumbent_yaml=inc.to_yaml(), spec_env=inc.env,
                                    trace_dirs=[rollout], history_records=[], history_md="")
    agg["memory_file_bytes"] = {f.name: {"mean": 60000, "max": 60000} for f in inc.files}  # everything grows
    # ... and the agent fails: stuck, invalid actions, no reward (the runtime notice/gate mutations)
    agg.update(unchanged_obs_steps=agg["total_steps"], invalid_actions=agg["total_steps"], max_zero_reward_streak=90)
    reg = workspace.op_registry()
    base = yaml.safe_load(inc.to_yaml())
    muts = heuristic.candidates(base, agg, reg)
    kinds = {m.key.split(":")[0] for m in muts}
    assert {"cap", "split", "iters", "drop", "notice", "gate"} <= kinds, kinds
    for m in muts:
        spec = yaml.safe_load(inc.to_yaml())
        m.apply(spec)
        spec.update(version=1, parent=0)
        cand = memory.validate_spec(spec)
        validation.check_rules(cand, Limits())
        assert validation.structural_changes(inc, cand), m.key


def test_heuristic_turns_on_action_repair_when_actions_are_often_invalid(tmp_path):
    from automem_jax.loops.structure import heuristic, workspace

    inc = memory.load_spec(CRAFTER_V0)
    rollout = write_rollout(tmp_path / "roll", steps=12)
    agg = workspace.build_workspace(tmp_path / "ws", incumbent_yaml=inc.to_yaml(), spec_env=inc.env,
                                    trace_dirs=[rollout], history_records=[], history_md="")
    reg = workspace.op_registry()
    assert set(reg["action_repairs"]) >= set(heuristic.COSMETIC_REPAIRS)
    assert "`case`" in (tmp_path / "ws" / "op_registry.md").read_text()
    agg.update(invalid_actions=5, total_steps=20)
    new, analysis, keys = heuristic.propose(yaml.safe_load(inc.to_yaml()), agg, reg)
    assert "action_repair" in keys and "Turned on action repair" in analysis
    cand = memory.validate_spec(new | {"version": 1, "parent": 0})
    assert cand.action_repair == ("two_step", "whitespace", "strip_quotes", "trailing_period", "case")
    agg.update(invalid_actions=1)  # 5%: left alone
    new, _, keys = heuristic.propose(yaml.safe_load(inc.to_yaml()), agg, reg)
    assert "action_repair" not in keys and new["action_repair"] == ["two_step"]
