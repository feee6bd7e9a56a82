"""AutoMem's LoRA SFT recipes (REFERENCE §1.3) as ml_collections ConfigDicts, plus a tiny CPU demo recipe.

AutoMem trained with LLaMA-Factory (`RANK:ALPHA:DROPOUT:LR:EPOCHS:BATCH:ACCUM:CUTOFF:SCHED:WARMUP:...:GPUS:TARGET`):
  Crafter   256:512:0.0:5e-5:4:2:8:16384:cosine:0.05 on 2 GPUs, q,k,v,o        -> effective batch 2*8*2 = 32
  MiniHack  128:256:0.0:5e-5:3:2:4:16384:cosine:0.05 on 2 GPUs, all modules    -> 16
  NetHack   256:512:0.0:5e-5:1:2:8:16384:cosine:0.05 on 2 GPUs, all modules    -> 32
Here a batch is `micro_batch_size * grad_accum` packed rows of `seq_len` tokens (global, over all devices).
LLaMA-Factory did not pack, so one of its examples is one row there; with packing a row holds several short
examples, so the same effective batch sees more examples per step (fewer steps per epoch).
"""
from __future__ import annotations

import ml_collections

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL = ATTN + ("gate_proj", "up_proj", "down_proj")


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.seq_len = 16384  # AutoMem's cutoff
    # loss on "all" assistant turns of an example (LLaMA-Factory's default, mask_history false, as AutoMem trained)
    # or only the "final" one
    c.loss_turns = "all"
    c.micro_batch_size = 2  # rows per micro-step, global (must divide by data*fsdp)
    c.grad_accum = 16
    c.num_epochs = 1.0
    c.max_steps = -1  # > 0 overrides num_epochs
    c.dtype = "bfloat16"  # base weights and compute
    c.lora_dtype = "float32"  # LoRA master weights and optimizer state
    # per-layer remat (models/attention.py REMAT_MODES): full | dots | dots_attn | none; full bounds memory at
    # 16k-token rows, dots_attn is faster where the saved projection outputs fit (see docs/PERFORMANCE.md)
    c.remat = "full"
    c.attention_impl = "auto"  # no-cache attention: auto (cuDNN flash on GPU, XLA on CPU) | xla | cudnn | pallas
    c.loss_chunk = 1024  # tokens per cross-entropy chunk (bounds the fp32 logits buffer)
    c.loss_impl = "fused"  # fused: dh computed with the logits (2 head matmuls, not 3) | chunked
    c.lora = ml_collections.ConfigDict({"rank": 256, "alpha": 512.0, "target_modules": ALL})
    c.optim = ml_collections.ConfigDict({
        "learning_rate": 5e-5, "schedule": "cosine", "warmup_ratio": 0.05, "min_lr_ratio": 0.0,
        "weight_decay": 0.0, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "clip_norm": 1.0})
    c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
    c.checkpoint_every = 50
    c.max_to_keep = 2
    c.log_every = 1
    c.base_model_name_or_path = ""
    c.adapter_name = "memory"
    return c


def crafter() -> ml_collections.ConfigDict:
    c = base()
    c.lora.rank, c.lora.alpha, c.lora.target_modules = 256, 512.0, ATTN
    c.num_epochs, c.grad_accum = 4.0, 16  # 2 * 16 = 32
    return c


def minihack() -> ml_collections.ConfigDict:
    c = base()
    c.lora.rank, c.lora.alpha, c.lora.target_modules = 128, 256.0, ALL
    c.num_epochs, c.grad_accum = 3.0, 8  # 2 * 8 = 16
    return c


def nethack() -> ml_collections.ConfigDict:
    c = base()
    c.lora.rank, c.lora.alpha, c.lora.target_modules = 256, 512.0, ALL
    c.num_epochs, c.grad_accum = 1.0, 16  # 2 * 16 = 32
    return c


def demo() -> ml_collections.ConfigDict:
    """Small and fast on CPU (tiny or 135M models, short rows)."""
    c = base()
    c.seq_len = 512
    c.micro_batch_size, c.grad_accum = 2, 2
    c.lora.rank, c.lora.alpha, c.lora.target_modules = 8, 16.0, ALL
    c.optim.learning_rate = 1e-3
    c.num_epochs = 2.0
    c.remat = "none"
    c.loss_chunk = 256
    c.checkpoint_every = 10
    return c


RECIPES = {"crafter": crafter, "minihack": minihack, "nethack": nethack, "demo": demo}


def recipe(name: str) -> ml_collections.ConfigDict:
    """The training recipe for an env family ('crafter', 'minihack', 'nethack') or 'demo'."""
    family = name.split(":")[0].lower()
    if family not in RECIPES:
        raise ValueError(f"train recipe: unknown {name!r}; choose from {sorted(RECIPES)}")
    return RECIPES[family]()
