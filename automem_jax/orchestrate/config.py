"""The experiment config: defaults every configs/*.py starts from, and validation that names the bad field.

One config system (ml_collections + absl): configs/<env>.py calls `base_config()`, sets what differs, and
`python -m automem_jax --config=configs/<env>.py --config.a.b=v` overrides any field. `validate(config)` runs at
start, so a typo'd schedule or overlapping seed ranges fail before a model is loaded.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import ml_collections

from automem_jax.engine.config import EngineConfig
from automem_jax.train import recipes

ENV_FAMILIES = ("crafter", "minihack", "nethack")
SCHEDULES = ("automem", "interleaved")
ENGINE_BACKENDS = ("jax", "sglang", "openai")
SEED_SPLITS = ("train", "selection", "test")
ACCEPT_RULES = ("t_test", "paper")  # loops/structure/acceptance.py
PROFICIENCY_ACCEPT = ACCEPT_RULES + ("always",)
PROFICIENCY_TEACHERS = ("", "rule")  # proficiency.teacher: "" = the agent's own traces (AutoMem)

# BALROG's MiniHack suite (REFERENCE §2.3): "minihack" alone in `envs` expands to these tasks.
BALROG_MINIHACK_TASKS = (
    "MiniHack-Boxoban-Hard-v0", "MiniHack-Boxoban-Medium-v0", "MiniHack-MazeWalk-9x9-v0",
    "MiniHack-MazeWalk-15x15-v0", "MiniHack-Corridor-R3-v0", "MiniHack-CorridorBattle-Dark-v0",
    "MiniHack-Quest-Easy-v0", "MiniHack-Quest-Medium-v0",
)

# BALROG leaderboard (REFERENCE §2.4, % progression): (label, env, value) reference lines for plots. Per env only:
# the leaderboard's "average" is over BALROG's 6 envs; the plot averages these over the envs a run plays.
BALROG_REFERENCES = (
    ("GPT-4o", "crafter", 33.1), ("GPT-4o", "minihack", 10.0), ("GPT-4o", "nethack", 0.4),
    ("Claude-3.5-Sonnet", "crafter", 32.7), ("Claude-3.5-Sonnet", "minihack", 15.0),
    ("Claude-3.5-Sonnet", "nethack", 0.6),
    ("Qwen2.5-72B-Instruct", "crafter", 27.3), ("Qwen2.5-72B-Instruct", "minihack", 5.0),
    ("Qwen2.5-72B-Instruct", "nethack", 0.3),
)


# AutoMem's evaluation seeds (its configs: crafter 42-51, minihack 42-46 per task, nle 42-46), [start, stop).
AUTOMEM_EVAL_SEEDS = {"crafter": (42, 52), "minihack": (42, 47), "nethack": (42, 47)}


class ConfigError(ValueError):
    """A config field is missing or invalid; the message names the field and the fix."""


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "automem"
    # Env names as envs.make() takes them: "crafter", "nethack", "minihack:<task>"; "minihack" = BALROG's 8 tasks.
    c.envs = ("crafter",)
    c.num_envs = 4  # env slots per env job (episodes running at once per env/task)
    c.max_steps = 100  # agent steps per episode
    # family -> extra envs.make kwargs. MiniHack autopickup: BALROG's default (off); AutoMem's paper configs turn it on.
    c.env_kwargs = ml_collections.ConfigDict(dict(minihack=ml_collections.ConfigDict(dict(autopickup=False))))

    c.model = "embedded"  # "embedded" (SmolLM2-135M from models.hub) | HF dir | models.PRESETS name
    c.engine = ml_collections.ConfigDict(dict(
        backend="jax", url="", openai_model="", timeout_s=600.0, retries=3,
        # backend openai: the request field carrying sampling.regex ("regex": SGLang, "guided_regex": vLLM; "" = none)
        openai_regex_param="",
        # JAX persistent compilation cache ("" = off; a relative path is under the workdir): reruns skip compiles
        compilation_cache_dir="",
        # the in-process JAX engine (backend "jax"): every EngineConfig field with its default
        # (automem_jax/engine/config.py), e.g. --config.engine.max_batch=64 --config.engine.mesh.data=4
        **EngineConfig().to_dict(),
    ))
    c.sampling = ml_collections.ConfigDict(dict(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=512))

    c.spec = "configs/specs/crafter_v0.yaml"
    c.baseline_spec = "configs/specs/nomemory.yaml"  # the no-memory baseline row ("" = skip it)
    # More evaluation rows: (label, spec path) pairs played on the test seeds next to the run's own specs, e.g.
    # (("crafter_v5", "configs/specs/crafter_v5.yaml"),) for the hand-written evolved spec. Never selected on.
    c.extra_eval_specs = ()
    # Decode every spec's memory phases (and the no-memory baseline's action) under the reply grammar
    # (memory/grammar.py), whatever the specs' own `constrained` flags say. Our extension: off in AutoMem/BALROG.
    c.constrained_phases = False

    # Seed ranges [start, stop); the three splits must not overlap.
    c.seeds = ml_collections.ConfigDict(dict(train=(1000, 100000), selection=(42, 52), test=(100, 110)))
    c.episodes = ml_collections.ConfigDict(dict(train_per_epoch=16))  # train seeds consumed per rollout epoch

    c.schedule = "automem"  # "automem": structure revisions first, then proficiency | "interleaved": both per epoch
    c.epochs = 2  # interleaved only: number of epochs

    # Structure loop: `enabled`/`revisions` are ours; every other field goes to loops.structure.StructureConfig.
    c.structure = ml_collections.ConfigDict(dict(
        enabled=True, revisions=2,
        proposer=ml_collections.ConfigDict(dict(kind="heuristic", command="", timeout_s=3600.0, model="",
                                                base_url="", max_tokens=4096, temperature=0.7)),
        attempts_per_revision=3, continuations_per_attempt=1, require_structural=True,
        # acceptance on the selection seeds (loops/structure/acceptance.py): "t_test" = one-sided paired t-test at
        # alpha (Student's t, n-1 df) | "paper" = AutoMem's rule, a strictly higher mean
        accept_rule="t_test", alpha=0.1,
    ))
    # Proficiency loop: select decisions (loops.proficiency.SelectionConfig) -> dataset -> LoRA (train.recipes).
    c.proficiency = ml_collections.ConfigDict(dict(
        # accept: keep the adapter only if it beats the incumbent on the selection seeds, by "paper" (strictly
        # higher mean) or "t_test" (paired t-test at structure.alpha); "always" keeps it without scoring
        enabled=True, rounds=1, accept="paper",
        min_examples=1,
        # Where the decisions come from: "" = the agent's own epoch traces (AutoMem); "rule" = a rule-based teacher
        # (agent.teacher) replays the epoch's seeds and selection reads its traces. For the CPU quickstart only,
        # whose tiny model writes no memory ops to learn from.
        teacher="",
        # max_examples: train on a seeded uniform sample of the selected decisions (tokenizing every one of a
        # 1024-episode epoch's ~35k decisions took 3.6 min on the GPU host for a run that trains on 480 rows)
        selection=ml_collections.ConfigDict(dict(phases=("LOG", "PLAN"), top_quantile=0.5,
                                                 require_valid_ops=True, no_redundant_writes=True,
                                                 max_examples=ml_collections.config_dict.placeholder(int), seed=0)),
        train=recipes.base(),
    ))

    c.report = ml_collections.ConfigDict(dict(
        references=BALROG_REFERENCES, tensorboard=True,
        # A second table on AutoMem's evaluation seeds (per family, [start, stop)) beside the held-out test table,
        # so numbers line up with the paper's; evaluates every row twice. Acceptance never uses it.
        paper_table=False, paper_seeds=ml_collections.ConfigDict(AUTOMEM_EVAL_SEEDS),
        # also evaluate the last round's adapter when the selection rule rejected it (row "<spec>+LoRA-rejected")
        eval_rejected_adapter=False,
        footer=""))  # printed after the report paths (the quickstart says it is a smoke run and where results are)
    c.multihost = False  # call jax.distributed.initialize() (TPU pod slices / multi-node GPU)
    c.seed = 0
    return c


def expand_envs(envs: Sequence[str], minihack_tasks: Sequence[str] = BALROG_MINIHACK_TASKS) -> list[str]:
    """Env names for envs.make(); bare "minihack" becomes one name per BALROG task."""
    out: list[str] = []
    for name in envs:
        out.extend(f"minihack:{t}" for t in minihack_tasks) if name == "minihack" else out.append(name)
    return out


def family_of(env_name: str) -> str:
    return env_name.partition(":")[0]


def paper_seeds(config: ml_collections.ConfigDict) -> dict[str, list[int]]:
    """Env family -> AutoMem's evaluation seeds for every family the run plays (report.paper_seeds)."""
    out = {}
    for fam in dict.fromkeys(family_of(n) for n in config.envs):
        start, stop = _pair(config.report.paper_seeds[fam], f"report.paper_seeds.{fam}")
        out[fam] = list(range(start, stop))
    return out


def seed_range(config: ml_collections.ConfigDict, split: str) -> range:
    start, stop = _pair(config.seeds[split], f"seeds.{split}")
    return range(start, stop)


def train_seeds(config: ml_collections.ConfigDict, epoch: int) -> list[int]:
    """Fresh training seeds per rollout epoch: epoch e takes the e-th block of `episodes.train_per_epoch`."""
    n = config.episodes.train_per_epoch
    r = seed_range(config, "train")
    return list(r[epoch * n:(epoch + 1) * n])


def rollout_epochs(config: ml_collections.ConfigDict) -> int:
    if config.schedule == "interleaved":
        return config.epochs
    s = config.structure.revisions if config.structure.enabled else 0
    p = config.proficiency.rounds if config.proficiency.enabled else 0
    return s + p


def _pair(value, field: str) -> tuple[int, int]:
    try:
        start, stop = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{field} must be a (start, stop) pair of ints, got {value!r}") from None
    if not 0 <= start < stop:
        raise ConfigError(f"{field} must satisfy 0 <= start < stop, got {value!r}")
    return start, stop


def _task_ok(name: str) -> bool:
    """The task part of an env name is one envs.make() accepts (checked here, before any env is built)."""
    family, _, task = name.partition(":")
    if family == "crafter":
        return task in ("", "crafter", "default", "reference")
    if family == "nethack":
        return not task or "NetHack" in task
    return not task or re.fullmatch(r"MiniHack-[\w.-]+-v\d+", task) is not None


def _require(cond: bool, field: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config.{field}: {msg}")


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Check every field the experiment reads; raise ConfigError naming the first bad one."""
    ref = base_config()
    for key in ref.keys():
        _require(key in config, key, f"missing (start from automem_jax.orchestrate.config.base_config())")
    envs = tuple(config.envs)
    _require(len(envs) > 0, "envs", "needs at least one env, e.g. ('crafter',)")
    for name in envs:
        _require(isinstance(name, str) and family_of(name) in ENV_FAMILIES, "envs",
                 f"unknown env {name!r}; use 'crafter', 'nethack', 'minihack' or 'minihack:<task>'")
    for name in envs:
        _require(_task_ok(name), "envs", f"{name!r}: unknown task; use 'crafter' (Craftax-Classic), "
                 "'crafter:reference', 'nethack' or 'nethack:<NetHack task id>', 'minihack' (BALROG's 8 tasks) or "
                 "'minihack:MiniHack-<name>-v<n>'")
    _require(len(set(envs)) == len(envs), "envs", f"duplicate env names in {envs}")
    for fam in ENV_FAMILIES:  # summaries key by family (BALROG's env): two variants of one family would pool
        variants = [n for n in envs if family_of(n) == fam and not (fam == "minihack" and ":" in n)]
        _require(len(variants) <= 1, "envs",
                 f"{variants} would pool into one {fam!r} env in the summary (BALROG keys results by env); "
                 "play them in two runs")
    _require(int(config.num_envs) >= 1, "num_envs", f"must be >= 1, got {config.num_envs}")
    _require(int(config.max_steps) >= 1, "max_steps", f"must be >= 1, got {config.max_steps}")
    _require(isinstance(config.model, str) and config.model != "", "model",
             "name the model: 'embedded', an HF directory or a preset name")

    e = config.engine
    _require(e.backend in ENGINE_BACKENDS, "engine.backend", f"must be one of {ENGINE_BACKENDS}, got {e.backend!r}")
    if e.backend in ("sglang", "openai"):
        _require(str(e.url).startswith(("http://", "https://")), "engine.url",
                 f"backend {e.backend!r} needs the server URL, e.g. --config.engine.url=http://127.0.0.1:30000")
    try:  # EngineConfig names the field and the fix
        EngineConfig.from_dict(e.to_dict())
    except (ValueError, TypeError) as err:
        raise ConfigError(f"config.{err}" if str(err).startswith("engine") else f"config.engine: {err}") from None
    _require(int(e.max_seq_len) >= 64, "engine.max_seq_len", "must be >= 64")
    _require(int(e.max_prefill_tokens) >= int(e.min_prefill_bucket) >= 1, "engine.max_prefill_tokens",
             f"must be >= engine.min_prefill_bucket={e.min_prefill_bucket} >= 1 (one row of the smallest bucket)")
    s = config.sampling
    _require(float(s.temperature) >= 0, "sampling.temperature", "must be >= 0")
    _require(0 < float(s.top_p) <= 1, "sampling.top_p", "must be in (0, 1]")
    _require(int(s.max_new_tokens) >= 1, "sampling.max_new_tokens", "must be >= 1")
    _require(int(s.top_k) >= 0, "sampling.top_k", f"must be >= 0 (0 = off), got {s.top_k}")
    _require(float(e.timeout_s) > 0 and int(e.retries) >= 0, "engine.timeout_s",
             f"timeout_s must be > 0 and retries >= 0, got {e.timeout_s} / {e.retries}")
    _require(int(s.max_new_tokens) < int(e.max_seq_len), "sampling.max_new_tokens",
             f"must be below engine.max_seq_len={e.max_seq_len}")

    _require(isinstance(config.spec, str) and config.spec.endswith((".yaml", ".yml")), "spec",
             f"must be a YAML spec path (configs/specs/<env>_v0.yaml), got {config.spec!r}")
    _require(config.baseline_spec == "" or str(config.baseline_spec).endswith((".yaml", ".yml")),
             "baseline_spec", "must be a YAML spec path or '' to skip the baseline row")

    labels = set()
    for i, pair in enumerate(config.extra_eval_specs):
        field = f"extra_eval_specs[{i}]"
        ok = isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)
        _require(ok, field, f"must be a (label, spec path) pair of strings, got {pair!r}")
        label, path = pair
        _require(bool(re.fullmatch(r"[A-Za-z][\w.-]{0,63}", label)) and not re.fullmatch(r"v\d+", label)
                 and label != "baseline" and label not in labels, field,
                 f"label {label!r} must be a unique name of letters, digits, '_', '.', '-' that is not 'baseline' or "
                 "a run's own spec label (v0, v1, ...)")
        _require(path.endswith((".yaml", ".yml")), field, f"path must be a spec YAML, got {path!r}")
        labels.add(label)

    ranges = {}
    for split in SEED_SPLITS:
        _require(split in config.seeds, f"seeds.{split}", "missing (start, stop) range")
        ranges[split] = _pair(config.seeds[split], f"seeds.{split}")
    for i, a in enumerate(SEED_SPLITS):
        for b in SEED_SPLITS[i + 1:]:
            (a0, a1), (b0, b1) = ranges[a], ranges[b]
            _require(a1 <= b0 or b1 <= a0, f"seeds.{b}",
                     f"range {ranges[b]} overlaps seeds.{a} {ranges[a]}; train, selection and test seeds must be "
                     "disjoint")
    _require(config.schedule in SCHEDULES, "schedule", f"must be one of {SCHEDULES}, got {config.schedule!r}")
    _require(int(config.epochs) >= 0, "epochs", "must be >= 0")
    _require(int(config.structure.revisions) >= 0, "structure.revisions", "must be >= 0")
    _check_structure(config.structure)
    _require(int(config.proficiency.rounds) >= 0, "proficiency.rounds", "must be >= 0")
    _require(config.proficiency.accept in PROFICIENCY_ACCEPT, "proficiency.accept",
             f"must be one of {PROFICIENCY_ACCEPT}, got {config.proficiency.accept!r}")
    _require(config.structure.accept_rule in ACCEPT_RULES, "structure.accept_rule",
             f"must be one of {ACCEPT_RULES} ('t_test': paired t-test; 'paper': AutoMem's strictly higher mean), "
             f"got {config.structure.accept_rule!r}")
    _require(0 < float(config.structure.alpha) < 0.5, "structure.alpha",
             f"must be a one-sided significance level in (0, 0.5), e.g. 0.1; got {config.structure.alpha!r}")
    teacher = config.proficiency.get("teacher", "")
    _require(teacher in PROFICIENCY_TEACHERS, "proficiency.teacher",
             f"must be one of {PROFICIENCY_TEACHERS} ('' = the agent's own traces), got {teacher!r}")
    _require(not teacher or not config.multihost, "proficiency.teacher",
             "the rule teacher is a single-host demo aid; set it to '' for multi-host runs")
    n = int(config.episodes.train_per_epoch)
    _require(n >= 1, "episodes.train_per_epoch", "must be >= 1")
    need = n * rollout_epochs(config)
    have = ranges["train"][1] - ranges["train"][0]
    _require(need <= have, "seeds.train",
             f"range {ranges['train']} has {have} seeds but {rollout_epochs(config)} rollout epochs x "
             f"episodes.train_per_epoch={n} need {need}; widen the range")
    t = config.proficiency.train
    on = bool(config.proficiency.enabled)
    _require(int(t.lora.rank) >= 1, "proficiency.train.lora.rank", "must be >= 1")
    _require(int(t.lora.rank) <= int(e.max_lora_rank) or not on, "proficiency.train.lora.rank",
             f"{t.lora.rank} exceeds engine.max_lora_rank={e.max_lora_rank}; the engine could not load the adapter")
    _require(set(t.lora.target_modules) <= set(e.lora_target_modules) or not on,
             "proficiency.train.lora.target_modules", f"{tuple(t.lora.target_modules)} must be a subset of "
             f"engine.lora_target_modules {tuple(e.lora_target_modules)}")
    _require(float(t.optim.learning_rate) > 0, "proficiency.train.optim.learning_rate", "must be > 0")
    _require(int(t.seq_len) >= 16, "proficiency.train.seq_len", "must be >= 16")
    _check_proficiency(config.proficiency)
    _require(t.get("loss_turns", "all") in ("all", "final"), "proficiency.train.loss_turns",
             f"must be 'all' (every assistant turn, LLaMA-Factory's default) or 'final', got {t.get('loss_turns')!r}")
    n_sel = seed_range(config, "selection")
    _require(len(n_sel) >= 2 or not config.structure.enabled, "seeds.selection",
             f"the structure loop's paired test needs >= 2 selection seeds, got {len(n_sel)}")
    if config.report.get("paper_table", False):
        for fam in dict.fromkeys(family_of(n) for n in envs):
            _require(fam in config.report.paper_seeds, f"report.paper_seeds.{fam}",
                     f"missing: the paper table needs AutoMem's evaluation seeds for every env family the run plays "
                     f"(defaults {AUTOMEM_EVAL_SEEDS}), or set report.paper_table=False")
        paper_seeds(config)  # (start, stop) checks
    for i, ref_line in enumerate(config.report.references):
        ok = len(ref_line) == 3 and isinstance(ref_line[0], str) and isinstance(ref_line[2], (int, float))
        _require(ok, f"report.references[{i}]", f"must be (label, env, percent), got {ref_line!r}")
        _require(ref_line[1] in ENV_FAMILIES, f"report.references[{i}]",
                 f"env must be one of {ENV_FAMILIES}, got {ref_line[1]!r} (an 'average' reference is not comparable: "
                 "BALROG's is over its 6 envs; the plot averages per-env references over the run's envs)")
    return config


def _check_structure(st: ml_collections.ConfigDict) -> None:
    from automem_jax.loops.structure.proposers import KINDS
    _require(st.proposer.kind in KINDS, "structure.proposer.kind", f"must be one of {KINDS}, got {st.proposer.kind!r}")
    _require(int(st.attempts_per_revision) >= 1, "structure.attempts_per_revision",
             f"must be >= 1 (fresh proposals per revision), got {st.attempts_per_revision}")
    _require(int(st.continuations_per_attempt) >= 0, "structure.continuations_per_attempt",
             f"must be >= 0, got {st.continuations_per_attempt}")


def _check_proficiency(pr: ml_collections.ConfigDict) -> None:
    from automem_jax.loops.proficiency.selection import SelectionConfig
    try:  # SelectionConfig checks its own fields (top_quantile in (0, 1], ...)
        SelectionConfig.from_dict(pr.selection)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"config.proficiency.{err}") from None
    _require(int(pr.min_examples) >= 1, "proficiency.min_examples", f"must be >= 1, got {pr.min_examples}")
    t = pr.train
    _require(int(t.max_steps) == -1 or int(t.max_steps) >= 1, "proficiency.train.max_steps",
             f"must be -1 (train num_epochs) or >= 1, got {t.max_steps}")
    for key in ("micro_batch_size", "grad_accum", "checkpoint_every"):
        _require(int(t[key]) >= 1, f"proficiency.train.{key}", f"must be >= 1, got {t[key]}")


# Fields a resumed run may change: how it executes and reports, not what it measures.
RESUMABLE_FIELDS = ("engine", "report", "multihost", "name")


def _leaves(d: object, prefix: str = "") -> dict[str, object]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, object] = {}
    for k, v in d.items():
        out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def check_resume(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> list[str]:
    """On a workdir that already holds a run (its config.json): ConfigError if a field deciding what the run
    measures differs (its finished phases measured the saved values, and the report would state the new ones);
    else the changed fields that may differ (RESUMABLE_FIELDS), for a warning."""
    import json
    path = Path(workdir) / "config.json"
    if not path.is_file():
        return []
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: unreadable ({err}); restore it, or start a new --workdir") from None
    old, new = _leaves(saved), _leaves(json.loads(config.to_json_best_effort()))
    default = _leaves(json.loads(base_config().to_json_best_effort()))
    # a field this version added (absent from the saved config) at its default, or one it dropped, changes nothing
    changed = sorted(k for k in new if old.get(k) != new[k] and (k in old or new[k] != default.get(k)))
    fixed = [k for k in changed if k.split(".", 1)[0] not in RESUMABLE_FIELDS]
    if fixed:
        detail = "; ".join(f"{k}: {old.get(k)!r:.60} -> {new.get(k)!r:.60}" for k in fixed[:3])
        more = f" (and {len(fixed) - 3} more)" if len(fixed) > 3 else ""
        raise ConfigError(f"config: {path.parent} holds a run started with other values ({detail}{more}); its "
                          "finished phases measured those, so resume with the values in its config.json or start a "
                          "new --workdir")
    return changed


def check_paths(config: ml_collections.ConfigDict) -> None:
    """Check every path and name the run will open (model, spec, baseline spec, Boxoban levels, proposer command
    or model) before anything is written; raise ConfigError naming the first bad one and the fix."""
    import shlex
    import shutil

    from automem_jax.experiment import resolve_path
    _check_model(config.model, "model")
    for field in ("spec", "baseline_spec"):
        value = str(config[field])
        if value and not resolve_path(value).is_file():
            raise ConfigError(f"config.{field}: {value!r} does not exist (relative paths are read from the current "
                              f"directory, then the repository); point it at a spec YAML such as "
                              f"configs/specs/crafter_v0.yaml" + (" or '' to skip the baseline row"
                                                                  if field == "baseline_spec" else ""))
    for i, (label, value) in enumerate(config.extra_eval_specs):
        if not resolve_path(str(value)).is_file():
            raise ConfigError(f"config.extra_eval_specs[{i}]: spec {value!r} of row {label!r} does not exist "
                              "(relative paths are read from the current directory, then the repository)")
    for name in expand_envs(config.envs):
        if family_of(name) == "minihack" and "boxoban" in name.lower():
            _check_boxoban(config, name)
    families = sorted({family_of(n) for n in config.envs})
    specs = [("spec", config.spec), ("baseline_spec", config.baseline_spec)] + \
        [(f"extra_eval_specs[{i}]", path) for i, (_, path) in enumerate(config.extra_eval_specs)]
    for field, value in specs:
        if value:
            _check_spec(resolve_path(str(value)), field, families)
    if not config.structure.enabled:
        return
    p = config.structure.proposer
    if p.kind == "command":
        try:
            argv = shlex.split(str(p.command))
        except ValueError as e:
            raise ConfigError(f"config.structure.proposer.command: cannot split {p.command!r} into words ({e})") \
                from None
        if not argv:
            raise ConfigError("config.structure.proposer.command: empty; give the command line the structure loop "
                              "runs in each revision workspace")
        exe = argv[0]
        if shutil.which(exe) is None and not (Path(exe).is_file() and os.access(exe, os.X_OK)):
            raise ConfigError(f"config.structure.proposer.command: {exe!r} is not an executable on PATH nor an "
                              "executable file; install it or give its full path")
    elif p.kind == "local":
        _check_model(str(p.model), "structure.proposer.model")
    elif p.kind == "openai" and p.base_url:  # "" = the run's served model (orchestrate/real_parts.proposer_config)
        if not str(p.base_url).startswith(("http://", "https://")):
            raise ConfigError(f"config.structure.proposer.base_url: {str(p.base_url)!r} is not an http:// or "
                              "https:// URL; give the API base URL, or '' for the model this run serves")
        if not p.model:
            raise ConfigError("config.structure.proposer.model: empty; name the model served at "
                              f"{p.base_url} (kind 'openai' with a base_url needs both)")


def _check_spec(path: Path, field: str, families: Sequence[str]) -> None:
    """The spec loads (every field checked), and it was written for the env families the run plays."""
    from automem_jax.memory.spec import SpecError, load_spec
    try:
        spec = load_spec(path)
    except SpecError as err:
        raise ConfigError(f"config.{field}: {path} is not a valid spec: {err}") from None
    wrong = [f for f in families if spec.env not in ("any", f)]
    if wrong:
        raise ConfigError(f"config.{field}: {path} is a spec for {spec.env!r} but the run plays {wrong}; use that "
                          f"env's spec (configs/specs/{wrong[0]}_v0.yaml) or one with env: any")


def _check_model(model: str, field: str) -> None:
    from automem_jax.models import hub
    try:
        hub.check_model(model)
    except ValueError as e:
        raise ConfigError(f"config.{field}: {e}") from None


def _check_boxoban(config: ml_collections.ConfigDict, env_name: str) -> None:
    kwargs = dict(config.env_kwargs.get("minihack", {}) or {})
    levels = kwargs.get("boxoban_levels_dir")
    sub = "hard" if "hard" in env_name.lower() else "medium/train"
    field = "env_kwargs.minihack.boxoban_levels_dir"
    if not levels:
        raise ConfigError(f"config.{field}: {env_name} needs the Boxoban levels (not shipped with minihack): set it "
                          f"to a directory holding {sub}/*.txt, e.g. shared/data/boxoban-levels")
    if not any((Path(str(levels)).expanduser() / sub).glob("*.txt")):
        raise ConfigError(f"config.{field}: {levels!r} has no {sub}/*.txt (needed by {env_name})")


def field_names(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every dotted field name of `config` (groups included)."""
    out = []
    for key, value in config.items():
        out.append(prefix + key)
        if isinstance(value, ml_collections.ConfigDict):
            out += field_names(value, f"{prefix}{key}.")
    return out


def nearest_field(name: str, config: ml_collections.ConfigDict | None = None) -> str | None:
    """The field of `config` (default base_config()) closest to a misspelt dotted name."""
    import difflib
    names = field_names(config if config is not None else base_config())
    near = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    return near[0] if near else None
