"""The server's command line: `python -m automem_jax.engine.server` (or `.server_cli`) with its flags, the
platform defaults, the model resolved and loaded, an optional warm-up, then READY <url> on stdout.

Usage mistakes (a bad flag, --model, --lora or mesh) are one line on stderr and exit status 2, before any model is
loaded."""
from __future__ import annotations

import sys
import threading
import time
from typing import Any

from absl import logging

from automem_jax.engine import config as engine_config
from automem_jax.engine.server import EngineHTTPServer, is_loopback

# The engine's flags are EngineConfig's (engine/config.py define_flags), with its defaults, except where a platform
# has measured values of its own, which a flag left unset takes. On a CPU (the embedded model on 2 cores): float32
# (XLA's CPU bfloat16 is emulated: ~10 s per 4-row decode step against 0.2 s), 4 slots (64 slots cost ~3.5 s per
# step and a 12 GB float32 cache), a 2048-token context, one prompt per prefill call from a 16-token bucket up
# (a prefill costs its padded tokens; one program per bucket instead of one per rows x bucket: fewer compiles, and
# a CPU gains nothing from batching prefills), and rank-64 LoRA slots (every row computes each projection's LoRA
# term, adapter or not: rank 256 made 32-token replies 1.6-1.8x slower than rank 64; its 4 slots hold 1.2 GB).
PLATFORM_DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": dict(dtype="float32", max_batch=4, max_seq_len=2048, min_prefill_bucket=16, max_prefill_tokens=16,
                max_lora_rank=64),
}
WARM_PROMPT_TOKENS = 128  # the warm-up compiles the prefill buckets up to this many prompt tokens


def define_flags(flag_values=None) -> None:
    """CLI flags (defined only when run as a program, so importing this module defines no flags): the server's
    own, then the engine's (engine.config.define_flags)."""
    from absl import flags
    fv = flags.FLAGS if flag_values is None else flag_values
    flags.DEFINE_string("model", "embedded", "'embedded' (SmolLM2-135M-Instruct), an HF model directory, or a "
                        "preset name (random weights, no tokenizer)", flag_values=fv)
    flags.DEFINE_string("served_model_name", None, "model id in /v1/models (default: the model directory's name)",
                        flag_values=fv)
    flags.DEFINE_string("host", "127.0.0.1", "bind address; anything but loopback needs --allow_remote",
                        flag_values=fv)
    flags.DEFINE_bool("allow_remote", False, "allow a non-loopback --host: anyone who can reach the port can load "
                      "adapters from any path this process can read", flag_values=fv)
    flags.DEFINE_integer("port", 30000, "port (0 = any free port; READY prints the URL)", flag_values=fv)
    flags.DEFINE_multi_string("lora", [], "adapter to load at start, name=path (repeatable)", flag_values=fv)
    flags.DEFINE_float("batch_wait_ms", 5.0, "how long the collector waits to grow a batch", flag_values=fv)
    flags.DEFINE_bool("warmup", True, "compile the programs of the first requests before READY", flag_values=fv)
    engine_config.define_flags(flag_values=fv)
    flags.adopt_module_key_flags(engine_config, flag_values=fv)  # --help lists them beside the server's
    for platform, values in PLATFORM_DEFAULTS.items():
        for name, value in values.items():
            fv[name].help += f" (default on a {platform}: {value})"


def engine_settings(platform: str, flag_values=None) -> engine_config.EngineConfig:
    """The EngineConfig the engine flags describe; a flag the command line did not set takes the platform's value
    (PLATFORM_DEFAULTS) where it has one, else EngineConfig's default. A bad value is a ValueError naming it."""
    from absl import flags
    fv = flags.FLAGS if flag_values is None else flag_values
    unset = {k: v for k, v in PLATFORM_DEFAULTS.get(platform, {}).items() if not fv[k].present}
    return engine_config.from_flags(fv, **unset)


def fail(message: str) -> None:
    """A usage mistake: one line on stderr, exit status 2, before any model is loaded."""
    print(f"usage error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag value reported as one line (absl prints the whole usage text)."""
    from absl import flags
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(" ".join(str(e).split()))
    return []  # unreachable: fail exits


def main(argv) -> None:
    import jax
    from absl import flags

    from automem_jax.engine.runner import make_mesh
    from automem_jax.engine.scheduler import JaxEngine
    from automem_jax.engine.serving import warm_up
    from automem_jax.models import hub
    f = flags.FLAGS
    if len(argv) > 1:
        fail(f"unexpected arguments: {argv[1:]}")
    if not is_loopback(f.host) and not f.allow_remote:
        fail(f"--host={f.host} is not a loopback address: /load_lora_adapter would let anyone who reaches the port "
             "read any path this process can; pass --allow_remote to do it anyway")
    loras = []
    for spec in f.lora:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            fail(f"--lora={spec!r}: expected name=path")
        loras.append((name, path))
    platform = jax.default_backend()
    try:
        config = engine_settings(platform)
        make_mesh(config)  # the mesh sizes against this host's devices, before the model loads
    except ValueError as e:
        fail(str(e))
    t0 = time.monotonic()
    try:
        model = hub.resolve_model(f.model)
    except ValueError as e:
        fail(f"--model: {e}")
    engine = JaxEngine(model, config=config)
    name = f.served_model_name or model.rstrip("/").split("/")[-1]
    args = {"model_path": model, "host": f.host, "port": f.port, "platform": platform, "allow_remote": f.allow_remote,
            "batch_wait_ms": f.batch_wait_ms, **engine.engine_config.to_dict()}
    server = EngineHTTPServer(engine, f.host, f.port, model_name=name, model_path=model,
                              batch_wait_s=f.batch_wait_ms / 1000, server_args=args)
    for lname, path in loras:
        server.load_adapter(lname, path)
    server.serve_in_thread()
    url = f"http://{f.host}:{server.server_address[1]}"
    logging.info("serving %s on %s (%s: %s); loaded in %.1f s", model, url, platform, config, time.monotonic() - t0)
    if f.warmup:
        lengths = [b * 3 // 4 for b in engine.prefill_buckets if b <= WARM_PROMPT_TOKENS]
        server.warmup_s = warm_up(server.batcher, engine.config.vocab_size, engine.max_batch, engine.decode_steps,
                                  lengths)
        logging.info("warm-up took %.1f s", server.warmup_s)
    server.ready.set()
    print(f"READY {url}", flush=True)
    threading.Event().wait()


def run() -> None:
    from absl import app
    define_flags()
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
