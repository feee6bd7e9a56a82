"""`python -m automem_jax`: every config mistake is one line on stderr, exit status 2 and an untouched workdir;
--config_help lists every field with its value and meaning."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from automem_jax.orchestrate import config as cfg_lib
from automem_jax.orchestrate.config_help import FIELD_HELP, leaves

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "automem_jax", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=300)


@pytest.mark.parametrize("override, expect", [
    ("--config.model=/nonexistent", "config.model: '/nonexistent' is not 'embedded'"),
    ("--config.num_env=2", "--config.num_env: unknown config field; did you mean --config.num_envs?"),
    ("--config.engine.max_batchh=3", "did you mean --config.engine.max_batch?"),
    ("--config.num_envs=abc", "--config.num_envs=abc"),
    ("--config.spec=configs/specs/missing.yaml", "config.spec: 'configs/specs/missing.yaml' does not exist"),
    ("--config.baseline_spec=missing.yaml", "config.baseline_spec: 'missing.yaml' does not exist"),
    ("--config.extra_eval_specs=(('crafter_v5', 'missing.yaml'),)",
     "config.extra_eval_specs[0]: spec 'missing.yaml' of row 'crafter_v5' does not exist"),
    ("--config.envs=('minihack:MiniHack-Boxoban-Hard-v0',)", "config.env_kwargs.minihack.boxoban_levels_dir"),
    ("--config.structure.proposer.command=no-such-proposer-cli", "config.structure.proposer.command"),
])
def test_a_config_mistake_is_one_line_and_writes_nothing(tmp_path, override, expect):
    workdir = tmp_path / "run"
    extra = ["--config.structure.proposer.kind=command"] if "proposer.command" in override else []
    out = cli("--config=configs/quickstart.py", f"--workdir={workdir}", override, *extra)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error: ") and expect in lines[0], out.stderr
    assert out.stdout == "" and not workdir.exists()


def test_a_missing_config_file_is_one_line(tmp_path):
    out = cli("--config=configs/nope.py", f"--workdir={tmp_path / 'run'}")
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "configs/nope.py" in out.stderr
    assert not (tmp_path / "run").exists()


def test_config_help_lists_every_field_with_its_value_and_meaning():
    out = cli("--config=configs/quickstart.py", "--config_help")
    assert out.returncode == 0, out.stderr
    for name, _ in leaves(cfg_lib.base_config()):
        assert f"--config.{name}=" in out.stdout, name
    assert "--config.engine.max_batch=4 " in out.stdout  # the quickstart's value, not the default
    assert "KV-cache slots of the JAX engine" in out.stdout and "(no description)" not in out.stdout


def test_every_default_field_has_a_meaning():
    names = [name for name, _ in leaves(cfg_lib.base_config())]
    missing = [name for name in names if name not in FIELD_HELP]
    stale = [key for key in FIELD_HELP if key not in names and not any(n.startswith(key + ".") for n in names)]
    assert missing == [] and stale == []


def test_check_paths_accepts_the_shipped_configs():
    for name in ("quickstart", "crafter", "nethack"):
        spec = __import__("importlib").util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
        module = __import__("importlib").util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config()
        config.model = "embedded"
        cfg_lib.check_paths(cfg_lib.validate(config))
    assert cfg_lib.nearest_field("engine.max_btch") == "engine.max_batch"


def test_an_openai_proposer_needs_a_url_and_model_only_when_it_names_a_server():
    config = cfg_lib.base_config()
    config.model = "embedded"
    config.structure.proposer.kind = "openai"  # base_url "": the run's own served model (or the heuristic)
    cfg_lib.check_paths(cfg_lib.validate(config))
    config.structure.proposer.base_url = "api.example.com/v1"
    with pytest.raises(cfg_lib.ConfigError, match=r"proposer\.base_url: 'api\.example\.com/v1' is not an http"):
        cfg_lib.check_paths(config)
    config.structure.proposer.base_url = "https://api.example.com/v1"
    with pytest.raises(cfg_lib.ConfigError, match=r"proposer\.model: empty"):
        cfg_lib.check_paths(config)
    config.structure.proposer.model = "gpt-x"
    cfg_lib.check_paths(config)


def test_a_spec_that_does_not_load_or_was_written_for_another_env_is_refused_up_front(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nversion: [unclosed\n")
    for override, expect in ((f"--config.spec={broken}", "config.spec: "),
                             (f"--config.baseline_spec={broken}", "config.baseline_spec: "),
                             ("--config.spec=configs/specs/nethack_v0.yaml", "is a spec for 'nethack' but the run "
                                                                             "plays ['crafter']")):
        workdir = tmp_path / "run"
        out = cli("--config=configs/quickstart.py", f"--workdir={workdir}", override)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and expect in lines[0], out.stderr
        assert not workdir.exists()


def test_a_rerun_may_change_how_a_run_executes_but_not_what_it_measured(tmp_path):
    import json
    config = cfg_lib.base_config()
    (tmp_path / "config.json").write_text(config.to_json_best_effort())
    assert cfg_lib.check_resume(config, tmp_path) == []
    config.engine.max_batch = 8
    config.report.tensorboard = False
    assert cfg_lib.check_resume(config, tmp_path) == ["engine.max_batch", "report.tensorboard"]
    config.seeds.test = (200, 210)
    with pytest.raises(cfg_lib.ConfigError, match=r"seeds.test: \[100, 110\] -> \[200, 210\]"):
        cfg_lib.check_resume(config, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["seeds"]["test"] == [100, 110]  # the run's own record stays
    config.seeds.test = (100, 110)
    del saved["structure"]["alpha"], saved["engine"]["retries"]  # a workdir of a version without these fields
    saved["dropped_field"] = 1  # ... or with one this version no longer has
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert cfg_lib.check_resume(config, tmp_path) == ["engine.max_batch", "report.tensorboard"]
    out = cli("--config=configs/quickstart.py", f"--workdir={tmp_path}")  # quickstart != base: refused at once
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "holds a run started with other values" in lines[0]
