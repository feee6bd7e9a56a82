"""LoRA trainer on a tiny model: memorisation, frozen base, mesh equivalence, kill/resume, PEFT round trip."""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from automem_jax.models import import_peft
from automem_jax.train import LoRATrainer, PackedDataset, build_dataset, train_lora
from automem_jax.train.data import BatchStream
from train_helpers import CharChatTokenizer, examples, mesh_of, tiny_cfg, tiny_lora_model

SEQ = 48


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    """Persistent compilation cache for this module: the resume test builds three trainers with the same step
    program; compiling it once (instead of 3x ~10 s on this CPU) keeps the module fast."""
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    old = {k: getattr(jax.config, k) for k in keys}
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    yield
    for k, v in old.items():
        jax.config.update(k, v)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data") / "ds"
    info = build_dataset(examples(8), CharChatTokenizer(), d, seq_len=SEQ)
    assert info.num_examples == 8
    return d


@pytest.fixture(scope="module")
def hf_model_and_data(tmp_path_factory):
    """A tiny random HF model dir (real tokenizer + chat template) and a dataset built with its tokenizer."""
    from automem_jax.models.testing import save_tiny_hf_model
    from automem_jax.models.tokenizer import load_tokenizer

    model_dir = save_tiny_hf_model(tmp_path_factory.mktemp("hf") / "tiny", arch="qwen2")
    data = tmp_path_factory.mktemp("data") / "hf_ds"
    build_dataset(examples(8), load_tokenizer(model_dir), data, seq_len=HF_SEQ)
    return str(model_dir), data


HF_SEQ = 96


def _host_batch(dataset_dir, cfg, position=0):
    ds = PackedDataset(dataset_dir)
    return BatchStream(ds, cfg.micro_batch_size * cfg.grad_accum, cfg.seed, position).next()


def _frozen_numpy(trainer):
    return [np.asarray(x) for x in jax.tree.leaves(trainer.frozen)]


def test_memorise_only_lora_changes_and_peft_roundtrip(dataset_dir, tmp_path):
    cfg = tiny_cfg(SEQ, max_steps=40)
    mesh = mesh_of(1)
    trainer = LoRATrainer(tiny_lora_model(), cfg, mesh, total_steps=40)
    base_before = _frozen_numpy(trainer)
    lora_before = [np.asarray(x) for x in jax.tree.leaves(trainer.lora)]
    stream = BatchStream(PackedDataset(dataset_dir), cfg.micro_batch_size * cfg.grad_accum, seed=0)
    losses = [float(trainer.step(trainer.put_batch(stream.next(), cfg.grad_accum))["loss"]) for _ in range(40)]
    # 8 rows, 8 per batch: every step sees all examples; the loss must collapse, not just dip
    assert losses[-1] < 0.25 * losses[0], losses
    assert all(np.array_equal(a, b) for a, b in zip(base_before, _frozen_numpy(trainer)))  # bitwise
    lora_after = [np.asarray(x) for x in jax.tree.leaves(trainer.lora)]
    assert all(x.dtype == np.float32 for x in lora_after)
    assert sum(not np.array_equal(a, b) for a, b in zip(lora_before, lora_after)) == len(lora_after)

    # export -> import into a fresh model (same base, different LoRA init): identical logits
    from automem_jax.train import export_adapter
    out = export_adapter(trainer, tmp_path / "adapter", cfg)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == cfg.lora.rank
    trained = trainer.updated_model()
    fresh = import_peft(_fresh_same_base(), out)
    ids = jnp.asarray(_host_batch(dataset_dir, cfg)["tokens"][:2])
    logits = nnx.jit(lambda m, x: m.logits(x))  # one compile for the three same-shaped models
    want = np.asarray(logits(trained, ids))
    np.testing.assert_allclose(np.asarray(logits(fresh, ids)), want, atol=1e-5, rtol=0)
    assert not np.allclose(np.asarray(logits(_fresh_same_base(), ids)), want, atol=1e-3)


def _fresh_same_base():
    """Same base weights (seed 0), LoRA shifted (nonzero B) so that it truly differs before the import."""
    m = tiny_lora_model(seed=0)
    for var in jax.tree.leaves(nnx.state(m, nnx.LoRAParam), is_leaf=lambda x: isinstance(x, nnx.Variable)):
        var[...] = var[...] + 0.05
    return m


def test_mesh_2x2x2_matches_one_device(dataset_dir):
    cfg = tiny_cfg(SEQ, max_steps=40)  # as in the memorise test: the 1-device step program comes from the cache
    batch = _host_batch(dataset_dir, cfg)
    curves = []
    for mesh in (mesh_of(1), mesh_of(8, data=2, fsdp=2, tensor=2)):
        trainer = LoRATrainer(tiny_lora_model(), cfg, mesh, total_steps=40)
        if mesh.size == 8:  # the params really are sharded over fsdp/tensor
            specs = {str(s.spec) for s in jax.tree.leaves(trainer.frozen_shardings)}
            assert any("tensor" in s for s in specs) and any("fsdp" in s for s in specs)
        curves.append([float(trainer.step(trainer.put_batch(batch, cfg.grad_accum))["loss"]) for _ in range(3)])
    np.testing.assert_allclose(curves[1], curves[0], atol=1e-4, rtol=0)
    assert curves[0][2] < curves[0][0]


def test_kill_and_resume_gives_the_same_curve(hf_model_and_data, tmp_path):
    """Through the real entry: HF dir -> load_model(mesh, lora) -> train -> checkpoints -> PEFT export."""
    model_dir, data = hf_model_and_data
    cfg = tiny_cfg(HF_SEQ, max_steps=8, checkpoint_every=3)
    cfg.micro_batch_size, cfg.grad_accum = 2, 2  # 4 of 8 rows per step: the epoch permutation matters
    mesh = mesh_of(2, fsdp=2)
    full = train_lora(cfg, model_dir, data, tmp_path / "full", mesh=mesh)
    assert full.steps == 8 and (tmp_path / "full" / "adapter" / "adapter_model.safetensors").exists()
    k = 3
    part = train_lora(cfg, model_dir, data, tmp_path / "killed", mesh=mesh, stop_after_steps=k)
    assert part.steps == k and part.adapter_dir is None
    engine = RecordingEngine()
    resumed = train_lora(cfg, model_dir, data, tmp_path / "killed", mesh=mesh, engine=engine, adapter_name="mem1")
    assert resumed.resumed_from == k and min(resumed.losses) == k + 1
    np.testing.assert_allclose([resumed.losses[s] for s in range(k + 1, 9)],
                               [full.losses[s] for s in range(k + 1, 9)], rtol=1e-6)
    assert resumed.final_loss == pytest.approx(full.losses[k + 5], rel=1e-6)
    assert engine.loaded == [("mem1", resumed.adapter_dir)]
    rows = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9)) and all(r["tokens_per_s"] > 0 for r in rows)
    with pytest.raises(ValueError, match="seq_len"):
        train_lora(tiny_cfg(64), model_dir, data, tmp_path / "x", mesh=mesh)


def test_proficiency_round_end_to_end(hf_model_and_data, tmp_path):
    """traces -> selection -> dataset (real chat template) -> LoRA -> adapter; a rerun resumes every stage."""
    from automem_jax.loops.proficiency import run_proficiency_round
    from test_proficiency import _episode

    model_dir, _ = hf_model_and_data
    traces = tmp_path / "traces"
    traces.mkdir()
    (traces / "ep1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _episode(1)))
    cfg = tiny_cfg(HF_SEQ, max_steps=2, checkpoint_every=3)
    cfg.micro_batch_size, cfg.grad_accum = 2, 2
    out = run_proficiency_round([traces], model_dir, tmp_path / "round", cfg, {"top_quantile": None},
                                mesh=mesh_of(2, fsdp=2))
    assert out["selection"]["selected"] == 3 and out["dataset"].dropped_too_long == 1
    assert out["train"].steps == 2 and (Path(out["train"].adapter_dir) / "adapter_config.json").exists()
    again = run_proficiency_round([tmp_path / "nonexistent"], model_dir, tmp_path / "round", cfg,
                                  mesh=mesh_of(2, fsdp=2))  # every stage already done: nothing re-read
    assert again["train"].resumed_from == 2 and again["selection"]["selected"] == 3


class RecordingEngine:
    def __init__(self):
        self.loaded = []

    def load_adapter(self, name, path):
        self.loaded.append((name, path))


KILL_SCRIPT = """
import sys
from automem_jax.train import train_lora
from train_helpers import tiny_cfg
cfg = tiny_cfg(int(sys.argv[3]), max_steps=40, checkpoint_every=2)
cfg.micro_batch_size, cfg.grad_accum, cfg.mesh.fsdp = 2, 2, 1
train_lora(cfg, sys.argv[1], sys.argv[2], sys.argv[4])
"""


@pytest.mark.slow
def test_subprocess_kill_and_resume(hf_model_and_data, tmp_path):
    """SIGKILL a real training process once it has checkpointed, then resume in-process to the same curve."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    model_dir, data = hf_model_and_data
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
               PYTHONPATH=str(root))
    wd = tmp_path / "wd"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, model_dir, str(data), str(HF_SEQ), str(wd)],
                            env=env, cwd=root)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            steps = [int(p.name) for p in (wd / "checkpoints").glob("[0-9]*") if p.name.isdigit()]
            if any(s >= 4 for s in steps):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the training process ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    cfg = tiny_cfg(HF_SEQ, max_steps=40, checkpoint_every=2)
    cfg.micro_batch_size, cfg.grad_accum = 2, 2
    mesh = mesh_of(1)
    resumed = train_lora(cfg, model_dir, data, wd, mesh=mesh)
    k = resumed.resumed_from
    assert k is not None and k >= 2
    full = train_lora(cfg, model_dir, data, tmp_path / "full", mesh=mesh)
    np.testing.assert_allclose(resumed.losses[k + 5], full.losses[k + 5], rtol=1e-5)
