"""Packed tensorstore dataset, deterministic resumable stream, chunked cross-entropy, FLOP counts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from automem_jax.models import tiny_config
from automem_jax.models.config import PRESETS
from automem_jax.train import BatchStream, PackedDataset, build_dataset
from automem_jax.train import flops
from automem_jax.train.data import DatasetInfo, final_turn_mask, pack
from automem_jax.train.loss import chunked_cross_entropy, reference_cross_entropy
from train_helpers import CharChatTokenizer, examples


def test_final_turn_mask():
    assert final_turn_mask([0, 1, 1, 0, 0, 1, 1, 1, 0]).tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 0]
    assert final_turn_mask([0, 0]).tolist() == [0, 0]


def test_pack_layout():
    seqs = [(np.array([5, 6, 7], np.int32), np.array([0, 1, 1], np.uint8)),
            (np.array([8, 9], np.int32), np.array([0, 1], np.uint8)),
            (np.arange(10, 20, dtype=np.int32), np.ones(10, np.uint8)),  # too long for 8
            (np.array([4, 4], np.int32), np.array([1, 0], np.uint8))]   # nothing to predict
    arrays, stats = pack(seqs, 8, pad_id=0)
    assert stats == {"dropped_too_long": 1, "dropped_no_loss": 1, "num_examples": 2}
    assert arrays["tokens"].tolist() == [[5, 6, 7, 8, 9, 0, 0, 0]]
    assert arrays["targets"].tolist() == [[6, 7, 0, 9, 0, 0, 0, 0]]
    assert arrays["loss_mask"].tolist() == [[1, 1, 0, 1, 0, 0, 0, 0]]
    assert arrays["segment_ids"].tolist() == [[1, 1, 1, 2, 2, 0, 0, 0]]
    assert arrays["positions"].tolist() == [[0, 1, 2, 0, 1, 0, 0, 0]]


def test_dataset_roundtrip_and_stream(tmp_path):
    exs = examples(8)
    # a multi-turn chat: by default (loss_turns "all") both assistant turns count in the loss
    exs.append({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "OLD"},
                             {"role": "user", "content": "b"}, {"role": "assistant", "content": "NEW"}]})
    info = build_dataset(exs, CharChatTokenizer(), tmp_path / "ds", seq_len=48)
    assert info.num_examples == 9 and DatasetInfo.load(tmp_path / "ds") == info
    assert not list(tmp_path.glob(".ds.tmp-*"))
    ds = PackedDataset(tmp_path / "ds")
    rows = ds.read(range(len(ds)))
    assert int(rows["loss_mask"].sum()) == info.num_loss_tokens
    # loss tokens of the multi-turn example: both replies (this stand-in masks the role token, 3 chars and eos:
    # 5 each) and nothing of the user turns
    mt = [r for r in range(len(ds)) if (rows["tokens"][r] == 4 + ord("O")).any()][0]
    seg = rows["segment_ids"][mt][list(rows["tokens"][mt]).index(4 + ord("O"))]
    in_seg = rows["segment_ids"][mt] == seg
    assert rows["loss_mask"][mt][in_seg].sum() == 10
    assert [int(t) - 4 for t, m in zip(rows["targets"][mt][in_seg], rows["loss_mask"][mt][in_seg])
            if m and t > 3] == [ord(c) for c in "OLDNEW"]
    # targets are next tokens within a segment
    t, y, s = rows["tokens"], rows["targets"], rows["segment_ids"]
    same = (s[:, :-1] == s[:, 1:]) & (s[:, :-1] > 0)
    assert (y[:, :-1][same] == t[:, 1:][same]).all()

    a = BatchStream(ds, batch_size=3, seed=7)
    seen = [a.next()["tokens"] for _ in range(5)]
    b = BatchStream(ds, batch_size=3, seed=7, position=6)  # resume after two batches
    assert all((b.next()["tokens"] == x).all() for x in seen[2:])
    epoch0 = a.rows_at(0, len(ds))
    assert sorted(epoch0.tolist()) == list(range(len(ds)))  # a permutation per epoch
    assert not (BatchStream(ds, 3, seed=8).rows_at(0, len(ds)) == epoch0).all()
    with pytest.raises(FileNotFoundError, match="manifest"):
        PackedDataset(tmp_path)
    with pytest.raises(ValueError, match="no example left"):
        build_dataset(exs, CharChatTokenizer(), tmp_path / "ds2", seq_len=4)


def test_chunked_ce_matches_reference():
    k = jax.random.split(jax.random.key(0), 4)
    h = jax.random.normal(k[0], (2, 13, 8))
    w = jax.random.normal(k[1], (8, 50))
    targets = jax.random.randint(k[2], (2, 13), 0, 50)
    mask = jax.random.bernoulli(k[3], 0.6, (2, 13))
    head = lambda x: x @ w
    ref = reference_cross_entropy(head(h), targets, mask)
    for chunk in (4, 64):  # padded multi-chunk path and the one-chunk path
        got = chunked_cross_entropy(h, head, targets, mask, chunk)
        np.testing.assert_allclose(got[0], ref[0], rtol=1e-5)
        assert float(got[1]) == float(ref[1])
    g_ref = jax.grad(lambda h: reference_cross_entropy(head(h), targets, mask)[0])(h)
    g = jax.grad(lambda h: chunked_cross_entropy(h, head, targets, mask, 4)[0])(h)
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-5)


def test_flop_counts():
    cfg = PRESETS["qwen2p5_1p5b"]
    # Qwen2.5-1.5B: ~1.54B params with a tied 151936 x 1536 embedding
    assert 1.50e9 < flops.total_params(cfg) < 1.60e9
    f = flops.train_flops_per_token(cfg, 2048, 64)
    n_mm = flops.matmul_params(cfg)
    assert f["full_6n"] - f["lora_train"] == pytest.approx(2 * n_mm - 6 * f["lora_params"])
    assert flops.lora_params(tiny_config(), 4, ("q_proj",)) == 2 * 4 * (64 + 64)
    with pytest.raises(ValueError, match="target_modules"):
        flops.lora_params(cfg, 4, ("qkv",))
    assert flops.mfu(1e9, 100.0, 1e12) == pytest.approx(0.1) and flops.mfu(1.0, 1.0, None) is None


def test_real_chat_template_multi_turn_masks(tmp_path):
    """With the real tokenizer (ChatML): "all" (LLaMA-Factory's default, mask_history false) puts the loss on every
    assistant reply and its end-of-turn token, as LLaMA-Factory's supervised processor labels each (prompt,
    response) pair of a multi-turn example; "final" (mask_history true) on the last reply only. Prompts, role
    headers and the system message never count."""
    from automem_jax.models.testing import save_tiny_hf_model
    from automem_jax.models.tokenizer import load_tokenizer
    from automem_jax.train.data import tokenize_examples

    tok = load_tokenizer(save_tiny_hf_model(tmp_path / "m"))
    msgs = [{"role": "system", "content": "notes"}, {"role": "user", "content": "obs"},
            {"role": "assistant", "content": "<|READ|>a<|END|>"}, {"role": "user", "content": "[a] empty"},
            {"role": "assistant", "content": "<|APPEND|>a|x<|END|>"}]

    def runs(ids, mask):  # decoded text of each contiguous masked run
        out, cur = [], []
        for t, m in zip(ids, mask):
            if m:
                cur.append(int(t))
            elif cur:
                out, cur = out + [tok.decode(cur)], []
        return out + ([tok.decode(cur)] if cur else [])

    [(ids, mask)] = tokenize_examples([{"messages": msgs}], tok)  # default: all turns
    assert runs(ids, mask) == ["<|READ|>a<|END|><|im_end|>", "<|APPEND|>a|x<|END|><|im_end|>"]
    [(ids_f, mask_f)] = tokenize_examples([{"messages": msgs}], tok, loss_turns="final")
    assert ids_f.tolist() == ids.tolist() and runs(ids_f, mask_f) == ["<|APPEND|>a|x<|END|><|im_end|>"]
    with pytest.raises(ValueError, match="loss_turns must be one of"):
        tokenize_examples([{"messages": msgs}], tok, loss_turns="last")


def test_dataset_records_loss_turns(tmp_path):
    msgs = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]
    all_turns = build_dataset([{"messages": msgs}], CharChatTokenizer(), tmp_path / "all", seq_len=64)
    final = build_dataset([{"messages": msgs}], CharChatTokenizer(), tmp_path / "final", seq_len=64,
                          loss_turns="final")
    assert (all_turns.loss_turns, final.loss_turns) == ("all", "final")
    assert DatasetInfo.load(tmp_path / "all").loss_turns == "all"
    assert all_turns.num_loss_tokens > final.num_loss_tokens > 0
