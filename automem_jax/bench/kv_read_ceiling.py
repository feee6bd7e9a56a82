"""What a GPU can read of a decode step's KV cache: the ceiling the Pallas decode attention is judged against.

`python -m automem_jax.bench.kv_read_ceiling --json_out=bench/results/kv-read-ceiling-<device>-<date>.json`

Calibration only, not part of the product: plain Triton kernels launched through PyTorch (both are on the GPU host;
neither is a dependency of automem_jax). It reads the model's cache layout [L, B, S, K, E] the way
`kernels/decode_attention.py` does (one program per (row, kv head), BLOCK tokens of 128-byte rows per step, K and V),
at the decode benchmark's shapes (SmolLM2-135M: 3 kv heads of 9 q heads; Qwen2.5-0.5B: 2 of 14; head_dim 64; every
row at position 575 of a 680 window) and prints, in TB/s of live K/V bytes:
- `copy` / `sum`: a 2 GB device copy (bytes read + written) and a 2 GB reduction (bytes read);
- `read`: the cache pattern streamed with no arithmetic worth the name (one launch over all layers);
- `attention`: the same loads with flash-decoding's arithmetic, one launch per layer, replayed as a CUDA graph; its
  `no_softmax` variant keeps both dots but drops the max/exp/sum (the price of the online softmax).
"""
from __future__ import annotations

import json
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("batches", ["64", "256"], "batch sizes")
flags.DEFINE_string("json_out", None, "write the JSON here too")

SHAPES = (("smollm2", 3, 3), ("qwen", 2, 7))  # (name, kv heads, q heads per kv head)
LAYERS, HEAD_DIM, WINDOW, POS = 24, 64, 680, 575


def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def read(K, V, Out, Pos, s_l, s_b, s_s, s_k, BS: tl.constexpr, E: tl.constexpr):
        b, h, layer = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        p = tl.load(Pos + b)
        offs_s, offs_e = tl.arange(0, BS), tl.arange(0, E)
        base = layer.to(tl.int64) * s_l + b.to(tl.int64) * s_b + h * s_k
        acc = tl.zeros([BS, E], tl.float32)
        for i in range(0, tl.cdiv(p + 1, BS)):
            idx = i * BS + offs_s
            ptr = base + idx[:, None] * s_s + offs_e[None, :]
            k = tl.load(K + ptr, mask=idx[:, None] <= p, other=0.)
            v = tl.load(V + ptr, mask=idx[:, None] <= p, other=0.)
            acc += k.to(tl.float32) * v.to(tl.float32)
        tl.store(Out + (layer * tl.num_programs(0) + b) * tl.num_programs(1) + h, tl.sum(acc))

    @triton.jit
    def attention(Q, K, V, Out, Pos, s_b, s_s, s_k, scale, G: tl.constexpr, BS: tl.constexpr, E: tl.constexpr,
                  SOFTMAX: tl.constexpr):
        b, h, nh = tl.program_id(0), tl.program_id(1), tl.num_programs(1)
        p = tl.load(Pos + b)
        rows, offs_s, offs_e = tl.arange(0, 16), tl.arange(0, BS), tl.arange(0, E)
        qm = rows[:, None] < G  # the G q heads of this kv head in a 16-row tile, as the Pallas kernel
        q = tl.load(Q + ((b * nh + h) * G + rows[:, None]) * E + offs_e[None, :], mask=qm, other=0.)
        base = b.to(tl.int64) * s_b + h * s_k
        m_i = tl.full([16], -1e30, tl.float32)
        l_i = tl.zeros([16], tl.float32)
        acc = tl.zeros([16, E], tl.float32)
        for i in range(0, tl.cdiv(p + 1, BS)):
            idx = i * BS + offs_s
            valid = idx <= p
            ptr = base + idx[:, None] * s_s + offs_e[None, :]
            k = tl.load(K + ptr, mask=valid[:, None], other=0.)
            v = tl.load(V + ptr, mask=valid[:, None], other=0.)
            s = tl.dot(q, tl.trans(k)) * scale
            if SOFTMAX:
                s = tl.where(valid[None, :], s, -1e30)
                m_new = tl.maximum(m_i, tl.max(s, 1))
                pr = tl.exp(s - m_new[:, None])
                alpha = tl.exp(m_i - m_new)
                l_i = l_i * alpha + tl.sum(pr, 1)
                acc = acc * alpha[:, None] + tl.dot(pr.to(tl.bfloat16), v)
                m_i = m_new
            else:
                acc += tl.dot(s.to(tl.bfloat16), v)
        out = acc / l_i[:, None] if SOFTMAX else acc
        tl.store(Out + ((b * nh + h) * G + rows[:, None]) * E + offs_e[None, :], out.to(tl.bfloat16), mask=qm)

    return read, attention


def _shape_rows(read, attention, bench, name: str, kv: int, g: int, batch: int) -> list[dict]:
    import torch
    ck = torch.randn(LAYERS, batch, WINDOW + 40, kv, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    cv = torch.randn_like(ck)
    q = torch.randn(batch, kv * g, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    pos = torch.full((batch,), POS, dtype=torch.int32, device="cuda")
    live = batch * (POS + 1) * kv * HEAD_DIM * 2 * 2  # K and V bytes per layer
    st = ck.stride()
    sink = torch.empty(LAYERS * batch * kv, device="cuda", dtype=torch.float32)
    o = torch.empty_like(q)
    rows = []
    for bs, warps, stages in ((32, 4, 2), (64, 4, 2), (64, 4, 3), (64, 8, 2), (128, 8, 3)):
        row = {"shape": name, "batch": batch, "block": bs, "warps": warps, "stages": stages}
        ms = bench(lambda: read[(batch, kv, LAYERS)](ck, cv, sink, pos, *st[:4], BS=bs, E=HEAD_DIM,
                                                     num_warps=warps, num_stages=stages))
        row["read_tbps"] = live * LAYERS / ms / 1e9
        for softmax in (True, False):
            def layers(softmax=softmax):
                for layer in range(LAYERS):
                    attention[(batch, kv)](q, ck[layer], cv[layer], o, pos, *st[1:4], HEAD_DIM ** -0.5, G=g,
                                           BS=bs, E=HEAD_DIM, SOFTMAX=softmax, num_warps=warps, num_stages=stages)
            layers()
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                layers()
            ms = bench(graph.replay)
            key = "attention" if softmax else "attention_no_softmax"
            row[f"{key}_us_per_layer"] = ms * 1e3 / LAYERS
            row[f"{key}_tbps"] = live * LAYERS / ms / 1e9
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def _copy_and_sum(bench) -> dict:
    import torch
    x = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    xb = x.view(torch.bfloat16)
    return {"copy_tbps_read_plus_write": 2 * x.numel() / bench(lambda: y.copy_(x)) / 1e9,
            "sum_tbps": x.numel() / bench(lambda: xb.sum(dtype=torch.float32)) / 1e9}


def main(argv):
    del argv
    import torch
    import triton

    from automem_jax.bench import common as bench_common
    read, attention = _kernels()
    bench = lambda fn: triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")  # noqa: E731 (ms)
    result = {**bench_common.header("kv_read_ceiling"), "torch": torch.__version__, "triton": triton.__version__,
              "layers": LAYERS, "window": WINDOW, "position": POS, **_copy_and_sum(bench), "rows": []}
    torch.cuda.empty_cache()
    for name, kv, g in SHAPES:
        for batch in map(int, FLAGS.batches):
            result["rows"] += _shape_rows(read, attention, bench, name, kv, g, batch)
            torch.cuda.empty_cache()
    bench_common.emit(result, FLAGS.json_out)


if __name__ == "__main__":
    app.run(main)
