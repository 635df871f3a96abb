import math

import pytest
import torch
import torch.nn.functional as F
from conftest import model_size
from torch import nn

from llmprep.model import GPT, GPTConfig
from llmprep.model.gpt import KVCache, Linear

VOCAB = 97


def tiny(**overrides: object) -> GPT:
    torch.manual_seed(0)
    return GPT(model_size("gpt2-tiny", vocab_size=VOCAB, **overrides)).eval()


def parameter_count(model: nn.Module) -> int:
    """Parameters as Lightning's model summary counts them: a shared tensor once."""
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("tie", "expected"), [(False, 163_009_536), (True, 124_412_160)])
def test_gpt2_small_parameter_count(tie: bool, expected: int) -> None:
    with torch.device("meta"):
        model = GPT(model_size("gpt2-small", tie_weights=tie))
    assert parameter_count(model) == expected


def test_tied_head_shares_the_embedding_and_counts_once() -> None:
    tied, untied = tiny(tie_weights=True), tiny()
    assert tied.out_head.weight is tied.tok_emb.weight
    assert parameter_count(untied) - parameter_count(tied) == VOCAB * 64


@pytest.mark.parametrize("head", [None, 2])
def test_flops_per_token_match_torch_flop_counter(head: int | None) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny().train()
    if head is not None:
        model.out_head = nn.Linear(64, head)
    idx = torch.randint(0, VOCAB, (2, 24))
    # The math kernel spells attention out as matmuls, which the counter sees on every device.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(idx).sum().backward()
    assert model.flops_per_token(24) * idx.numel() == counter.get_total_flops()


class _OpsCalled(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the name of every ATen operator that runs inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("bias", [True, False])
def test_linear_runs_on_onednn_without_gradients_and_on_f_linear_in_training(
    bias: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN")
    torch.manual_seed(0)
    layer, plain = Linear(48, 80, bias=bias), nn.Linear(48, 80, bias=bias)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(3, 7, 48)[:, 2:]  # 3-D and not contiguous, as the head's last position
    with torch.no_grad(), _OpsCalled() as ops:
        fast = layer(x)
    assert "mkldnn._linear_pointwise" in ops.names
    torch.testing.assert_close(fast, plain(x), rtol=1e-5, atol=1e-5)
    with monkeypatch.context() as switch, torch.no_grad(), _OpsCalled() as ops:
        switch.setattr(torch.backends.mkldnn, "enabled", False)
        layer(x)
    assert "mkldnn._linear_pointwise" not in ops.names
    assert torch.backends.mkldnn.enabled
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16  # autocast's precision, as F.linear gives it

    x.requires_grad_(True)
    with _OpsCalled() as ops:
        out = layer(x)
    assert "mkldnn._linear_pointwise" not in ops.names
    out.square().sum().backward()
    plain(x.detach()).square().sum().backward()
    assert torch.equal(layer.weight.grad, plain.weight.grad)
    layer.weight.requires_grad_(False)  # a frozen layer under LoRA: the input still needs grad
    with _OpsCalled() as ops:
        layer(x)
    assert "mkldnn._linear_pointwise" not in ops.names


def test_layers_have_the_names_other_code_targets() -> None:
    model = tiny(qkv_bias=True)
    attn = model.blocks[1].attn
    for layer in (attn.query, attn.key, attn.value, attn.out_proj):
        assert isinstance(layer, nn.Linear) and layer.bias is not None
    assert model.blocks[0].ff.fc.out_features == 4 * 64
    assert isinstance(model.final_norm, nn.LayerNorm) and model.out_head.bias is None
    assert tiny().blocks[0].attn.query.bias is None


def test_init_scales_residual_projections_down() -> None:
    torch.manual_seed(0)
    model = GPT(model_size("gpt2-mini", vocab_size=VOCAB))
    assert model.blocks[0].ff.fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
    residual = 0.02 / math.sqrt(2 * 4)
    assert model.blocks[0].ff.proj.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert model.blocks[0].attn.out_proj.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert not model.blocks[0].ff.fc.bias.any()


def test_logits_shape_and_replaced_head() -> None:
    model = tiny()
    idx = torch.randint(0, VOCAB, (3, 10))
    assert model(idx).shape == (3, 10, VOCAB)
    model.out_head = nn.Linear(64, 2)
    assert model(idx).shape == (3, 10, 2)


def test_positions_only_see_the_past() -> None:
    model = tiny()
    idx = torch.randint(0, VOCAB, (1, 12))
    changed = idx.clone()
    changed[0, 6] = (changed[0, 6] + 1) % VOCAB
    before, after = model(idx), model(changed)
    torch.testing.assert_close(before[:, :6], after[:, :6])
    assert not torch.allclose(before[:, 6:], after[:, 6:])


def test_too_long_input_is_refused() -> None:
    model = tiny(context_length=8)
    with pytest.raises(ValueError, match="9 tokens exceeds the model's context_length of 8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    cache = KVCache(8)
    model(torch.zeros(1, 6, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="3 tokens after 6 cached"):
        model(torch.zeros(1, 3, dtype=torch.long), kv_cache=cache)


def test_cached_chunks_give_the_full_sequence_logits() -> None:
    model = tiny()
    idx = torch.randint(0, VOCAB, (2, 16))
    cache = KVCache(16)
    chunks = [idx[:, :5], idx[:, 5:9], idx[:, 9:10], idx[:, 10:16]]
    pieces = [model(chunk, kv_cache=cache) for chunk in chunks]
    assert len(cache) == 16
    torch.testing.assert_close(torch.cat(pieces, dim=1), model(idx), atol=1e-5, rtol=1e-5)


def test_cache_writes_in_place_and_refuses_more_than_its_capacity() -> None:
    model, cache = tiny(), KVCache(6)
    model(torch.zeros(2, 4, dtype=torch.long), kv_cache=cache)
    buffer = cache.keys[0]
    model(torch.zeros(2, 2, dtype=torch.long), kv_cache=cache)
    assert cache.keys[0] is buffer and buffer.shape == (2, 2, 6, 32)
    cache.reset()
    model(torch.zeros(2, 3, dtype=torch.long), kv_cache=cache)
    assert cache.keys[0] is buffer  # a reset cache reuses its buffers
    with pytest.raises(ValueError, match="KV cache of 6 positions holds 3, no room for 4 more"):
        model(torch.zeros(2, 4, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="capacity must be a positive integer"):
        KVCache(0)


def padded_batch(short: torch.Tensor, long: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch [2, L] of ``short`` [1, S] left-padded to ``long``'s length (L - S padding tokens
    of an arbitrary id) above ``long`` [1, L], and its attention mask."""
    count = long.shape[1] - short.shape[1]
    idx = torch.cat([torch.cat([torch.full((1, count), 5), short], dim=1), long])
    mask = torch.ones_like(idx, dtype=torch.bool)
    mask[0, :count] = False
    return idx, mask


def test_left_padded_rows_compute_what_they_compute_alone() -> None:
    model = tiny()
    short, long = torch.randint(0, VOCAB, (1, 5)), torch.randint(0, VOCAB, (1, 9))
    idx, mask = padded_batch(short, long)
    logits = model(idx, attention_mask=mask)
    assert logits.isfinite().all()  # padding queries too: they attend to themselves
    torch.testing.assert_close(logits[:1, 4:], model(short), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[1:], model(long), atol=1e-5, rtol=1e-5)
    changed = idx.clone()
    changed[0, :4] = 7  # what the padding holds does not matter
    again = model(changed, attention_mask=mask)
    torch.testing.assert_close(again[:1, 4:], logits[:1, 4:])
    torch.testing.assert_close(again[1:], logits[1:])


def test_cache_remembers_the_padding_for_later_tokens() -> None:
    model = tiny()
    short, long = torch.randint(0, VOCAB, (1, 8)), torch.randint(0, VOCAB, (1, 11))
    idx, mask = padded_batch(short, long)
    cache = KVCache(16)
    first = model(idx[:, :7], kv_cache=cache, attention_mask=mask[:, :7])
    rest = [model(idx[:, t : t + 1], kv_cache=cache) for t in range(7, 11)]
    cached = torch.cat([first, *rest], dim=1)
    torch.testing.assert_close(cached[:1, 3:], model(short), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached[1:], model(long), atol=1e-5, rtol=1e-5)


def test_last_only_gives_the_last_positions_logits_of_the_full_forward() -> None:
    model = tiny()
    idx = torch.randint(0, VOCAB, (2, 10))
    last = model(idx, last_only=True)
    assert last.shape == (2, 1, VOCAB)
    torch.testing.assert_close(last, model(idx)[:, -1:])


def test_attention_mask_of_another_shape_is_refused() -> None:
    with pytest.raises(ValueError, match=r"attention_mask must have idx's shape \[2, 4\]"):
        tiny()(torch.zeros(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 3))


def test_cache_refuses_a_different_batch() -> None:
    model, cache = tiny(), KVCache(8)
    model(torch.zeros(2, 4, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="batch of 2 sequences but got 1"):
        model(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)
    cache.reset()
    assert len(cache) == 0


def test_dropout_only_acts_in_training() -> None:
    model = tiny(dropout=0.5)
    idx = torch.randint(0, VOCAB, (1, 8))
    torch.testing.assert_close(model(idx), model(idx))
    model.train()
    assert not torch.allclose(model(idx), model(idx))


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    model = GPT(model_size("gpt2-tiny", dropout=0.1))
    idx = torch.randint(0, 50257, (2, 16))
    grads, calls = [], []
    forward = model.blocks[0].forward
    model.blocks[0].forward = lambda *a: calls.append(1) or forward(*a)
    for recompute in (False, True):
        model.zero_grad()
        model.activation_checkpointing = recompute
        torch.manual_seed(1)
        model(idx).float().pow(2).mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert len(calls) == 1 + 2  # recomputed once more in the backward pass
    for plain, recomputed in zip(*grads, strict=True):
        torch.testing.assert_close(plain, recomputed)


def test_init_choice_sets_the_scale_of_fresh_weights():
    gpt2 = GPT(model_size("gpt2-tiny"))
    book = GPT(model_size("gpt2-tiny", init="torch"))
    assert gpt2.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert book.tok_emb.weight.std().item() == pytest.approx(1.0, rel=0.05)
    with pytest.raises(ValueError, match=r"GPTConfig\.init must be one of gpt2, torch"):
        GPTConfig(init="xavier")


def _loss_and_grads(model: GPT, loss_of) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    loss = loss_of(model)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("tie", [False, True])
def test_chunked_loss_equals_cross_entropy_on_the_full_logits(monkeypatch, tie: bool) -> None:
    """Over several chunks (the last one short), with ignored targets, a tied head included."""
    monkeypatch.setattr("llmprep.model.gpt.LOSS_CHUNK", 7)
    model = tiny(tie_weights=tie)
    idx = torch.randint(0, VOCAB, (3, 10))
    targets = torch.randint(0, VOCAB, (3, 10))
    targets[0, :4] = -100
    targets[2, 7:] = -100

    def full(m: GPT) -> torch.Tensor:
        return F.cross_entropy(m(idx).flatten(0, 1), targets.flatten(), ignore_index=-100)

    chunked, chunked_grads = _loss_and_grads(model, lambda m: m.loss(idx, targets))
    plain, plain_grads = _loss_and_grads(model, full)
    torch.testing.assert_close(chunked, plain)
    assert len(chunked_grads) == len(plain_grads) == len(list(model.parameters()))
    for a, b in zip(chunked_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        torch.testing.assert_close(model.loss(idx, targets), plain)


def test_chunked_loss_under_bf16_autocast_matches_the_full_logits(monkeypatch) -> None:
    """As ``bf16-mixed`` training runs it: the head's gradient still in the weight's fp32."""
    monkeypatch.setattr("llmprep.model.gpt.LOSS_CHUNK", 7)
    model = tiny()
    idx = torch.randint(0, VOCAB, (2, 10))
    targets = torch.randint(0, VOCAB, (2, 10))

    def full(m: GPT) -> torch.Tensor:
        return F.cross_entropy(m(idx).flatten(0, 1), targets.flatten())

    with torch.autocast("cpu", torch.bfloat16):
        chunked, chunked_grads = _loss_and_grads(model, lambda m: m.loss(idx, targets))
        plain, plain_grads = _loss_and_grads(model, full)
    assert model.out_head.weight.grad.dtype == torch.float32
    torch.testing.assert_close(chunked, plain, rtol=1e-2, atol=1e-2)
    for a, b in zip(chunked_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-3)


def test_loss_of_a_frozen_or_replaced_head() -> None:
    """A frozen head gets no gradient (and the rest the right one); another head is scored on
    its own outputs."""
    model = tiny()
    idx = torch.randint(0, VOCAB, (2, 8))
    targets = torch.randint(0, VOCAB, (2, 8))
    model.out_head.weight.requires_grad_(False)
    _, chunked_grads = _loss_and_grads(model, lambda m: m.loss(idx, targets))
    _, plain_grads = _loss_and_grads(
        model, lambda m: F.cross_entropy(m(idx).flatten(0, 1), targets.flatten())
    )
    assert model.out_head.weight.grad is None
    for a, b in zip(chunked_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    model.out_head = nn.Linear(64, 3)
    labels = torch.randint(0, 3, (2, 8))
    expected = F.cross_entropy(model(idx).flatten(0, 1), labels.flatten())
    torch.testing.assert_close(model.loss(idx, labels), expected)


def test_compiled_blocks_give_the_eager_loss_and_keep_the_state_dict_keys() -> None:
    model = tiny()
    keys = list(model.state_dict())
    idx = torch.randint(0, VOCAB, (2, 8))
    eager = model.loss(idx, idx)
    model.compile_blocks()
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model.loss(idx, idx), eager, rtol=1e-5, atol=1e-5)
    cache = KVCache(8)  # generation stays eager: the cached path never calls the compiled blocks
    model.compiled_blocks = None
    expected = model(idx[:, :3], kv_cache=cache)
    model.compile_blocks()
    cache.reset()
    torch.testing.assert_close(model(idx[:, :3], kv_cache=cache), expected)
