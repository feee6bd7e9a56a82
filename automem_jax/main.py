"""absl entry: `python -m automem_jax --config=configs/X.py --workdir=DIR [--config.a.b=v]`.

Checks the config first (every field, then every path and name it points at) and writes nothing before those
pass: a mistake is one line on stderr naming the field and exit status 2, with the workdir untouched. Then joins
the other hosts when `config.multihost`, builds the parts (engine, envs, agent, loops, trainer) and runs the
experiment; rerunning the same command resumes it. `--config_help` lists every field, its value and its meaning.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from automem_jax.orchestrate.config import ConfigError, base_config, check_paths, check_resume, nearest_field, \
    validate

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file (configs/*.py)")
_WORKDIR = flags.DEFINE_string("workdir", None, "experiment directory; rerun with the same one to resume")
_CONFIG_HELP = flags.DEFINE_bool("config_help", False, "list every config field (of --config, else the defaults) "
                                 "with its value and meaning, then exit")


def fail(message: str) -> None:
    """A usage mistake: one line on stderr, exit status 2."""
    print(f"config error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with each mistake in a --config override reported as one line (ml_collections raises
    a KeyError/AttributeError with a traceback for an unknown field, and prints several lines for a missing file)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(" ".join(str(e).split()))
    except (KeyError, AttributeError) as e:
        field = _unknown_override(argv, str(e))
        if field is None:
            raise
        near = nearest_field(field, _CONFIG.value if _CONFIG.present else None)
        hint = f"; did you mean --config.{near}?" if near else "; see --config_help for every field"
        fail(f"--config.{field}: unknown config field{hint}")
    return []  # unreachable: fail exits


def _unknown_override(argv: list[str], error: str) -> str | None:
    """The dotted name of the --config.<name> override that named the missing key in `error`."""
    match = re.search(r"'([^'\\]+)", error)
    key = match.group(1) if match else None
    for arg in argv:
        m = re.match(r"--config\.([\w.]+)", arg)
        if m and key is not None and m.group(1).split(".")[-1] == key:
            return m.group(1)
    return None


def loaded_config():
    """--config's ConfigDict (None if not given); a file that cannot be loaded is a one-line failure."""
    try:
        value = _CONFIG.value
        if value is not None:
            value.keys()  # a failed load is reported when the value is first read
        return value
    except OSError as e:
        reason = [line.strip() for line in str(e).splitlines() if line.strip()]
        fail(f"--config={flags.FLAGS['config'].serialize().partition('=')[2]}: cannot load it ({reason[-1]})")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = loaded_config()
    if _CONFIG_HELP.value:
        from automem_jax.orchestrate.config_help import describe
        print(describe(config if config is not None else base_config()))
        return
    if config is None or _WORKDIR.value is None:
        raise app.UsageError("--config and --workdir are required, e.g. "
                             "python -m automem_jax --config=configs/quickstart.py --workdir=runs/quickstart")
    try:
        validate(config)
        check_paths(config)
        check_resume(config, _WORKDIR.value)  # a rerun on a workdir may not change what its run measures
    except ConfigError as e:
        fail(str(e))

    from automem_jax.experiment import Experiment
    from automem_jax.orchestrate import distributed
    from automem_jax.orchestrate.real_parts import build_parts

    index, count = distributed.initialize(bool(config.multihost))
    workdir = Path(_WORKDIR.value)
    logging.info("experiment %s in %s (process %d of %d), schedule %s, envs %s", config.name, workdir, index,
                 count, config.schedule, tuple(config.envs))
    parts = build_parts(config, workdir)
    try:
        paths = Experiment(config, workdir, parts, process_index=index, process_count=count).run()
    finally:
        parts.close()
    if index == 0:
        print(f"results table: {paths['results']}")
        print(f"progression plot: {paths['plot']}")
        print(f"summary: {paths['summary']}")
        print(f"TensorBoard: tensorboard --logdir {workdir / 'tensorboard'}")
        if config.report.get("footer", ""):
            print(config.report.footer)


def run() -> None:
    app.run(main, flags_parser=parse_flags)
