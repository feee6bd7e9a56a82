"""MiniHack at paper scale: BALROG's 8 tasks x 5 seeds (40 episodes), AutoMem minihack_v0 -> v4 + LoRA."""
from automem_jax.orchestrate.paper import paper_scale_config
from automem_jax.train import recipes


def get_config():
    c = paper_scale_config("minihack", spec="configs/specs/minihack_v0.yaml", max_lora_rank=128)
    c.envs = ("minihack",)  # expands to BALROG's 8 MiniHack tasks
    c.num_envs = 8  # env slots per task (NLE worker processes)
    c.max_steps = 100  # BALROG max_episode_steps
    c.env_kwargs.minihack.autopickup = True  # AutoMem's paper configs (minihack_v4 config.yaml); BALROG's is False
    c.seeds.selection = (42, 47)  # 5 seeds x 8 tasks = 40 episodes (AutoMem)
    c.seeds.test = (100, 105)
    c.episodes.train_per_epoch = 13  # x 8 tasks ~ 100 trace episodes
    c.structure.revisions = 4  # AutoMem minihack_v0 -> v4
    c.proficiency.min_examples = 300  # AutoMem min_target_examples (minihack)
    c.proficiency.train = recipes.minihack()  # AutoMem's minihack LoRA recipe (train/recipes.py)
    return c
