"""What every experiment config field means, for `python -m automem_jax --config=X --config_help`.

The defaults live in config.base_config() (and train/recipes.py); this table only explains them. A test checks
that every field of base_config() has an entry here, so a new field cannot go undocumented.
"""
from __future__ import annotations

from typing import Iterator

import ml_collections

from automem_jax.engine.config import field_help

FIELD_HELP: dict[str, str] = {
    "name": "experiment name (report titles)",
    "envs": "env names: 'crafter', 'nethack', 'minihack' (BALROG's 8 tasks) or 'minihack:<task>'",
    "num_envs": "env slots per env job (episodes running at once per env/task)",
    "max_steps": "agent steps per episode",
    "env_kwargs": "family -> dict of extra envs.make kwargs, e.g. env_kwargs.minihack.boxoban_levels_dir",
    "env_kwargs.minihack.autopickup": "MiniHack autopickup (BALROG: off; AutoMem's paper configs: on)",
    "model": "'embedded' (SmolLM2-135M-Instruct from the bundled GGUF), an HF model directory, or a preset name",
    "engine.backend": "jax (in-process engine), sglang (an SGLang server at engine.url) or openai (any "
                      "OpenAI-compatible endpoint at engine.url)",
    "engine.url": "server URL for the sglang / openai backends, e.g. http://127.0.0.1:30000",
    "engine.openai_model": "model name sent to an OpenAI-compatible endpoint ('' = config.model)",
    "constrained_phases": "decode every spec's memory phases and the baseline's action under the reply grammar "
                          "(memory/grammar.py), whatever the specs say; our extension, off in AutoMem/BALROG",
    "report.footer": "text printed after the report paths at the end of a run ('' = none)",
    "engine.openai_regex_param": "body field the openai backend puts a constrained phase's regex in ('regex' for "
                                 "SGLang, 'guided_regex' for vLLM; '' = refuse constrained phases)",
    "engine.timeout_s": "seconds one HTTP request may take (sglang / openai backends)",
    "engine.retries": "retries of a failed HTTP request (connection errors and 5xx)",
    "engine.compilation_cache_dir": "JAX persistent compilation cache ('' = off; relative = under the workdir)",
    "sampling.temperature": "sampling temperature of the agent (0 = greedy)",
    "sampling.top_p": "nucleus sampling mass (1 = off)",
    "sampling.top_k": "top-k sampling (0 = off)",
    "sampling.max_new_tokens": "reply tokens per agent turn",
    "spec": "memory spec YAML the run starts from (v0); relative paths are read from the cwd, else the repo",
    "baseline_spec": "spec of the no-memory baseline row ('' = skip that row)",
    "extra_eval_specs": "more (label, spec path) rows evaluated on the test seeds, never selected on",
    "seeds.train": "[start, stop) seeds of training rollouts (fresh seeds every epoch)",
    "seeds.selection": "[start, stop) seeds that decide whether a revision or adapter is kept",
    "seeds.test": "[start, stop) held-out evaluation seeds",
    "episodes.train_per_epoch": "training seeds consumed per rollout epoch",
    "schedule": "automem (structure revisions first, then proficiency) | interleaved (both every epoch)",
    "epochs": "interleaved schedule only: number of epochs",
    "structure.enabled": "run the structure loop (spec revisions)",
    "structure.revisions": "spec revisions to attempt",
    "structure.proposer.kind": "who writes a revision: heuristic | command (any CLI in the workspace) | openai | "
                               "local (a local model through the JAX engine)",
    "structure.proposer.command": "kind=command: the command line, run in the revision workspace",
    "structure.proposer.timeout_s": "seconds a proposer may run",
    "structure.proposer.model": "kind=openai: model name; kind=local: HF directory or preset",
    "structure.proposer.base_url": "kind=openai: API base URL, e.g. https://api.openai.com/v1",
    "structure.proposer.max_tokens": "reply tokens of an LLM proposer",
    "structure.proposer.temperature": "sampling temperature of an LLM proposer",
    "structure.attempts_per_revision": "proposals tried per revision",
    "structure.continuations_per_attempt": "follow-up rounds a proposer gets on one attempt",
    "structure.accept_rule": "how a revision is kept on the selection seeds: t_test (one-sided paired t-test at "
                             "structure.alpha) | paper (AutoMem's rule: a strictly higher mean)",
    "structure.alpha": "significance level of the t_test acceptance (and of proficiency.accept=t_test), in (0, 0.5)",
    "structure.require_structural": "a revision must change the spec's structure, not only its wording",
    "proficiency.enabled": "run the proficiency loop (LoRA training on good memory decisions)",
    "proficiency.rounds": "LoRA training rounds",
    "proficiency.accept": "paper (keep an adapter only if its mean beats the incumbent's) | t_test (paired t-test "
                          "at structure.alpha) | always",
    "proficiency.min_examples": "fewest selected decisions needed to train",
    "proficiency.teacher": "'' = the agent's own traces (AutoMem) | rule (a rule-based teacher; CPU demo only)",
    "proficiency.selection.phases": "phases whose memory decisions are selected (LOG, PLAN)",
    "proficiency.selection.top_quantile": "keep decisions of episodes in this top fraction by progression (at the "
                                          "group's floor, only episodes above it)",
    "proficiency.selection.require_valid_ops": "keep only decisions whose ops all parsed and ran",
    "proficiency.selection.no_redundant_writes": "drop decisions that rewrite what the memory already holds",
    "proficiency.selection.max_examples": "train on a uniform sample of this many selected decisions (None = all)",
    "proficiency.selection.seed": "seed of that sample",
    "proficiency.train.seed": "trainer seed",
    "proficiency.train.loss_turns": "loss on all assistant turns of an example (LLaMA-Factory's default) | final",
    "proficiency.train.seq_len": "tokens per packed training row (AutoMem's cutoff)",
    "proficiency.train.micro_batch_size": "rows per micro-step, global (divisible by mesh data x fsdp)",
    "proficiency.train.grad_accum": "micro-steps per optimizer step",
    "proficiency.train.num_epochs": "passes over the dataset",
    "proficiency.train.max_steps": "optimizer steps (> 0 overrides num_epochs)",
    "proficiency.train.dtype": "base weights and compute dtype of the trainer",
    "proficiency.train.lora_dtype": "LoRA master weights and optimizer state dtype",
    "proficiency.train.remat": "per-layer rematerialisation: full | dots | dots_attn | none",
    "proficiency.train.attention_impl": "training attention: auto | xla | cudnn | pallas",
    "proficiency.train.loss_chunk": "tokens per cross-entropy chunk (bounds the fp32 logits buffer)",
    "proficiency.train.loss_impl": "fused (logits and their gradient in one pass) | chunked",
    "proficiency.train.lora.rank": "LoRA rank (at most engine.max_lora_rank)",
    "proficiency.train.lora.alpha": "LoRA alpha (scale = alpha / rank)",
    "proficiency.train.lora.target_modules": "projections trained (a subset of engine.lora_target_modules)",
    "proficiency.train.optim.learning_rate": "peak learning rate",
    "proficiency.train.optim.schedule": "learning-rate schedule (cosine | linear | constant)",
    "proficiency.train.optim.warmup_ratio": "fraction of steps warming up",
    "proficiency.train.optim.min_lr_ratio": "final learning rate / peak",
    "proficiency.train.optim.weight_decay": "AdamW weight decay",
    "proficiency.train.optim.b1": "AdamW beta1",
    "proficiency.train.optim.b2": "AdamW beta2",
    "proficiency.train.optim.eps": "AdamW epsilon",
    "proficiency.train.optim.clip_norm": "global gradient-norm clip",
    "proficiency.train.mesh.data": "data-parallel devices",
    "proficiency.train.mesh.fsdp": "fully-sharded devices (-1 = the rest)",
    "proficiency.train.mesh.tensor": "tensor-parallel devices",
    "proficiency.train.checkpoint_every": "optimizer steps between trainer checkpoints",
    "proficiency.train.max_to_keep": "trainer checkpoints kept",
    "proficiency.train.log_every": "optimizer steps between metric logs",
    "proficiency.train.base_model_name_or_path": "base model name written into the exported PEFT adapter",
    "proficiency.train.adapter_name": "name of the exported adapter",
    "report.references": "(label, env | 'average', percent) reference lines in the plots (BALROG leaderboard)",
    "report.tensorboard": "write TensorBoard event files",
    "report.eval_rejected_adapter": "also evaluate the last round's adapter the selection rule rejected "
                                    "(row '<spec>+LoRA-rejected')",
    "report.paper_table": "also report a table on AutoMem's evaluation seeds (report.paper_seeds)",
    "report.paper_seeds.crafter": "[start, stop) of AutoMem's Crafter evaluation seeds (the paper table)",
    "report.paper_seeds.minihack": "[start, stop) of AutoMem's MiniHack evaluation seeds per task (the paper table)",
    "report.paper_seeds.nethack": "[start, stop) of AutoMem's NetHack evaluation seeds (the paper table)",
    "multihost": "call jax.distributed.initialize() (TPU pod slices / multi-node GPU)",
    "seed": "experiment seed (engine sampling, LoRA init)",
    # the in-process engine's options: their meanings live beside their defaults (engine/config.py)
    **{f"engine.{name}": meaning for name, meaning in field_help().items()},
}


def leaves(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(dotted name, value) of every field; an empty group (env_kwargs) is one field."""
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict) and len(value):
            yield from leaves(value, name + ".")
        else:
            yield name, value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


def describe(config: ml_collections.ConfigDict) -> str:
    """One line per field: `--config.<name>=<value>  <meaning>`, values as this config sets them."""
    rows = [(f"--config.{name}={_show(value)}", FIELD_HELP.get(name, "(no description)"))
            for name, value in leaves(config)]
    width = min(max(len(r[0]) for r in rows), 60)
    return "\n".join(f"{flag:<{width}}  {meaning}" if len(flag) <= width else f"{flag}\n{'':<{width}}  {meaning}"
                     for flag, meaning in rows)


def _show(value: object) -> str:
    text = repr(value) if not isinstance(value, str) else (value or "''")
    return text if len(text) <= 80 else text[:77] + "..."
