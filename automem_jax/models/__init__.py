"""Model stack: Flax NNX Llama-family decoder, presets, HF/GGUF loading, tokenizer, multi-slot LoRA with PEFT I/O."""
from automem_jax.models.config import ConfigError, ModelConfig, PRESETS, tiny_config
from automem_jax.models.decoder import Decoder
from automem_jax.models.kv_cache import KVCache
from automem_jax.models.sharding import param_shardings, shard_model
from automem_jax.models.lora import LoRAConfig, LoRAError, apply_lora, export_peft, import_peft, lora_state
from automem_jax.models.loader import LoadError, load_model
from automem_jax.models.tokenizer import Tokenizer, TokenizerError, load_tokenizer
from automem_jax.models.hub import embedded_model_dir

__all__ = ["ConfigError", "ModelConfig", "PRESETS", "tiny_config", "Decoder", "KVCache", "param_shardings",
           "shard_model", "LoRAConfig", "LoRAError", "apply_lora", "export_peft", "import_peft", "lora_state",
           "LoadError", "load_model", "load_tokenizer", "Tokenizer", "TokenizerError", "embedded_model_dir"]

