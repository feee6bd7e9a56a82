"""AutoMem on one GPU: both loops on Craftax with the embedded SmolLM2-135M (real weights), hundreds of episodes a row.

`python -m automem_jax --config=configs/crafter_gpu.py --workdir=runs/crafter_gpu` (rerun the same command after a
kill or a time limit: every phase resumes). Its results go to docs/results/<date>-crafter-smollm2-<gpu>/ once run;
README's Results section says where it stands; `make demo` is its CPU smoke version.

What runs, in order (orchestrate/schedule.py, "interleaved" schedule, one epoch):
  epoch 0: 1024 concurrent Craftax episodes with spec v0 (crafter_v0, every memory phase grammar-constrained)
           -> one structure revision by the offline heuristic proposer, accepted by a paired t-test on 32
           selection seeds
           -> a proficiency round on the same traces: the agent's own LOG/PLAN decisions of the better half of the
           episodes -> LoRA SFT -> kept if it beats the base model on the selection seeds (AutoMem's rule, strictly
           higher mean); a rejected adapter is still measured (row "+LoRA-rejected"). AutoMem's own schedule plays a
           fresh epoch before the proficiency round (schedule "automem"); one epoch halves the rollout time;
  evaluation on 256 held-out test seeds, paired across rows: no-memory baseline, the hand-written crafter_v5
  spec, v0, each accepted revision, +LoRA.

Why these sizes: max_steps=8 keeps the whole run inside what one 30-minute device budget leaves after machine
starts (a decision of the memory agent is 2-20 model calls of up to 32 tokens: LOG and PLAN take up to 10 turns each,
AutoMem's cap). Crafter's first achievements (collect wood, collect sapling, place plant) are reachable within 8
steps, so progression is not 0 by construction; longer episodes are one flag away (--config.max_steps). 256 test
episodes per row give a standard error of about 0.1-0.2 points at these scores. Measured on one H100 (2026-12-07,
docs/results/2026-12-07-crafter-smollm2-h100): the epoch's rollout 365 s (about 2 min of it compiles), the
structure phase 87 s, the proficiency phase 158 s (LoRA training 14 s; the rest scoring the adapter, with its
compiles), evaluation 269 s for five rows (~38 decisions/s at 256 envs as at 1024): about 15 minutes of phases in
one process. A resumed process restarts an interrupted row (its 256 episodes end together) and may compile again.
Why constrained decoding (`constrained_phases`): unconstrained, SmolLM2-135M writes no memory op and almost no valid
action (4,086 of 4,096 fallbacks in the agent benchmark on the H100); constrained, every reply parses (0 fallbacks in
the run's 19,200 decisions), so the traces are usable
training data for the proficiency loop. The no-memory baseline's action is constrained the same way (one of the
env's action names), so memory is what differs between the rows.
"""
from automem_jax.orchestrate.config import base_config
from automem_jax.train import recipes


def get_config():
    c = base_config()
    c.name = "crafter_gpu"
    c.envs = ("crafter",)
    c.num_envs = 1024  # concurrent Craftax episodes on the device
    c.max_steps = 8
    c.model = "embedded"
    c.engine.backend = "jax"
    c.engine.dtype = "bfloat16"
    c.engine.max_batch = 1024  # one slot per env
    c.engine.max_seq_len = 2048  # crafter_v0 prompts are ~1.2-1.6k tokens; 1024 x 2048 KV rows = 48 GB in bf16
    c.engine.max_loras = 2
    c.engine.max_lora_rank = 16
    c.engine.decode_steps = 16
    c.engine.compilation_cache_dir = "jax_cache"
    c.sampling.temperature = 1.0  # AutoMem
    c.sampling.max_new_tokens = 32  # an op with its argument, or the action; the grammar closes every reply in it
    c.spec = "configs/specs/crafter_v0.yaml"
    c.constrained_phases = True  # decode every memory phase under the spec's reply grammar (memory/grammar.py)
    c.baseline_spec = "configs/specs/nomemory.yaml"
    c.extra_eval_specs = (("crafter_v5", "configs/specs/crafter_v5.yaml"),)
    c.seeds.train = (10_000, 20_000)
    c.seeds.selection = (42, 74)  # 32 paired selection seeds (AutoMem: 10)
    c.seeds.test = (1000, 1256)  # 256 held-out test seeds, never selected on
    c.episodes.train_per_epoch = 1024
    c.schedule, c.epochs = "interleaved", 1  # one 1024-episode epoch feeds both loops (see the module doc)
    c.structure.revisions = 1
    c.structure.proposer.kind = "heuristic"
    c.structure.attempts_per_revision, c.structure.continuations_per_attempt = 1, 0
    c.structure.accept_rule, c.structure.alpha = "t_test", 0.1
    c.proficiency.rounds = 1
    c.proficiency.accept = "paper"  # AutoMem's rule on the selection seeds
    c.proficiency.min_examples = 64
    c.proficiency.selection.max_examples = 1024  # a seeded sample; training reads 60 x 8 = 480 rows of them
    c.report.eval_rejected_adapter = True
    c.report.references = ()  # BALROG's 27-33% lines (full-length episodes) would flatten 8-step scores of 1-3%
    c.proficiency.train = recipes.demo()  # rank 8, all projections
    t = c.proficiency.train
    t.dtype = "bfloat16"
    t.seq_len = 2048
    t.micro_batch_size, t.grad_accum, t.max_steps = 8, 1, 60
    t.checkpoint_every = 20
    t.mesh.data, t.mesh.fsdp, t.mesh.tensor = 1, 1, 1
    return c
