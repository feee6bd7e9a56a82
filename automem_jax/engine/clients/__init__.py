"""Engine backends that are clients of other servers: SGLang's native API (sglang.py), any OpenAI-compatible
endpoint (openai.py), and their shared HTTP plumbing (http_util.py)."""
