"""The GPT of the book in one file: token and position embeddings, pre-LayerNorm transformer
blocks, a vocabulary head, and a key/value cache for generation.

Module names are part of the interface: weight import/export, LoRA target lists and the
classifier-head swap all address layers by these names (``blocks.3.attn.query``, ``out_head``).
Query, key and value are separate ``Linear`` layers, as in the book, rather than one fused
projection, so each can be adapted or frozen on its own; one [3 x 768, 768] product measured no
faster on the CPU anyway (gpt2-small, 2 threads, forward and backward: 4-6 % slower, 3 %
slower with SDPA's backward included).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from llmprep.model.config import GPTConfig, is_int

LAYER_NORM_EPS = 1e-5
"""GPT-2's LayerNorm epsilon, used everywhere so OpenAI's weights give OpenAI's outputs."""

INIT_STD = 0.02
"""Standard deviation of the normal initialisation of every weight matrix and embedding."""

IGNORE_INDEX = -100
"""The target id the loss skips: padding, and masked prompts (``F.cross_entropy``'s default)."""

LOSS_CHUNK = 512
"""Positions per chunk of :meth:`GPT.loss`: 512 x 50,257 fp32 logits are 103 MB at a time.
On the CPU (gpt2-small's head, 2 threads) 256 was 4-10 % slower and 1024 or 2048 no faster."""


_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(
    torch.ops.mkldnn, "_linear_pointwise"
)


class Linear(nn.Linear):
    """``nn.Linear`` whose forward runs on oneDNN's matmul (``torch.ops.mkldnn._linear_pointwise``,
    the kernel torch.compile's CPU backend emits for linear layers) when it is fp32 on the CPU,
    outside autocast and ``torch.compile``, and no gradient is wanted: generation, evaluation,
    validation. Training keeps ``F.linear`` and its autograd; the results agree to float
    rounding.

    Why: PyTorch's fp32 ``F.linear`` on the CPU calls MKL, which on the development machine's
    AMD EPYC runs decoding's products (1 to 8 rows) at about half of oneDNN's speed:
    ``bench/bench_generate.py`` (gpt2-small, greedy, 2 threads) went from 18.8 to 26.5 new
    tokens/s for one prompt and from 78.8 to 115.8 for 8. A oneDNN backward measured no faster
    in a full training step, so training is left as it was. ``torch.backends.mkldnn.enabled =
    False`` turns this off.
    """

    def forward(self, x: Tensor) -> Tensor:
        if (
            _ONEDNN_LINEAR
            and torch.backends.mkldnn.enabled
            and x.device.type == "cpu"
            and x.dtype == self.weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling()  # compiled code picks its own kernels
            and not (torch.is_grad_enabled() and (x.requires_grad or self._trained()))
        ):
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return super().forward(x)

    def _trained(self) -> bool:
        return self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad)


class KVCache:
    """Keys and values of the positions a model has already seen, one pair per block, in buffers
    of ``capacity`` positions allocated at the first call and written in place (no copy of the
    whole cache per step).

    Pass the same cache to successive ``GPT.forward`` calls: the first call processes the prompt,
    later calls only the new tokens. The cache also remembers which stored positions are padding
    (from the calls' ``attention_mask``), so later calls mask them out and number each row's
    positions from its own first real token. Call ``reset()`` before reusing it for another
    sequence; the buffers are kept for it.
    """

    def __init__(self, capacity: int) -> None:
        if not is_int(capacity) or capacity < 1:
            raise ValueError(f"KVCache capacity must be a positive integer, got {capacity!r}")
        self.capacity = capacity
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []
        self._real: Tensor | None = None  # [B, capacity] bool: stored position is a token
        self._padded = False
        self._length = 0
        self._batch = 0

    def __len__(self) -> int:
        """Number of positions stored."""
        return self._length

    @property
    def mask(self) -> Tensor | None:
        """[B, len] bool, True at the stored positions that hold real tokens; None while none
        is padding."""
        return self._real[:, : self._length] if self._padded else None

    def append(self, batch: int, time: int, attention_mask: Tensor | None) -> None:
        """Make room for ``time`` new positions of ``batch`` sequences, real where
        ``attention_mask`` [B, time] is True (None: all real). The blocks then write their keys
        and values for these positions with :meth:`update`."""
        if self._length and batch != self._batch:
            raise ValueError(
                f"KV cache holds a batch of {self._batch} sequences but got {batch}; "
                "reset() the cache before a new batch"
            )
        if self._length + time > self.capacity:
            raise ValueError(
                f"KV cache of {self.capacity} positions holds {self._length}, no room for "
                f"{time} more"
            )
        start, end = self._length, self._length + time
        if attention_mask is not None and not self._padded:
            device = attention_mask.device
            if self._real is None or self._real.shape[0] != batch or self._real.device != device:
                self._real = torch.empty(batch, self.capacity, dtype=torch.bool, device=device)
            self._real[:, :start] = True
            self._padded = True
        if self._padded:
            self._real[:, start:end] = True if attention_mask is None else attention_mask
        self._batch, self._length = batch, end

    def update(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Write ``keys``/``values`` ([B, heads, T, head_dim]) of block ``layer`` at the positions
        :meth:`append` made room for; return all keys and values stored for that block."""
        end = self._length
        start = end - keys.shape[2]
        if layer == len(self.keys):
            self.keys.append(keys.new_empty(0))
            self.values.append(values.new_empty(0))
        shape = (*keys.shape[:2], self.capacity, keys.shape[3])
        stored = self.keys[layer]
        if start == 0 and (
            stored.shape != shape or stored.dtype != keys.dtype or stored.device != keys.device
        ):
            self.keys[layer] = keys.new_empty(shape)
            self.values[layer] = values.new_empty(shape)
        self.keys[layer][:, :, start:end] = keys
        self.values[layer][:, :, start:end] = values
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def reset(self) -> None:
        """Forget every stored position (the buffers stay allocated for the next sequence)."""
        self._length = 0
        self._padded = False


def padding_attention_mask(real: Tensor, time: int) -> Tensor:
    """The attention mask [B, 1, time, keys] (True: may attend) of the last ``time`` of the keys
    whose real tokens ``real`` [B, keys] marks: each query sees the real keys up to its own
    position, never padding. A padding query sees only itself (a row with no key at all would
    give NaN), so its output stays finite; no real query reads it."""
    keys = real.shape[1]
    query_at = torch.arange(keys - time, keys, device=real.device)[:, None]
    key_at = torch.arange(keys, device=real.device)[None, :]
    allowed = ((key_at <= query_at) & real[:, None, :]) | (key_at == query_at)
    return allowed[:, None]


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each position only attends to itself and the past."""

    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.n_heads
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        self.query = Linear(config.emb_dim, config.emb_dim, bias=config.qkv_bias)
        self.key = Linear(config.emb_dim, config.emb_dim, bias=config.qkv_bias)
        self.value = Linear(config.emb_dim, config.emb_dim, bias=config.qkv_bias)
        self.out_proj = Linear(config.emb_dim, config.emb_dim)

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, time, _ = x.shape
        return x.view(batch, time, self.n_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, kv_cache: KVCache | None, attn_mask: Tensor | None) -> Tensor:
        """``attn_mask`` [B, 1, T, keys] (True: may attend), from
        :func:`padding_attention_mask`, when some keys are padding; without it the mask is the
        plain causal one."""
        batch, time, width = x.shape
        q = self._split_heads(self.query(x))
        k = self._split_heads(self.key(x))
        v = self._split_heads(self.value(x))
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)
        # ``is_causal`` aligns the mask top-left, right only when queries and keys cover the same
        # positions: new queries after cached keys need it shifted right by the cache length (a
        # single new query sees every key).
        past = k.shape[2] - time
        mask = attn_mask
        if mask is None and past and time > 1:
            mask = torch.ones(time, k.shape[2], dtype=torch.bool, device=x.device).tril(past)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=not past and attn_mask is None
        )
        return self.out_proj(y.transpose(1, 2).reshape(batch, time, width))


class FeedForward(nn.Module):
    """The position-wise MLP: widen 4x, GELU (GPT-2's tanh approximation), project back."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = Linear(config.emb_dim, 4 * config.emb_dim)
        self.act = nn.GELU(approximate="tanh")
        self.proj = Linear(4 * config.emb_dim, config.emb_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    """A pre-LayerNorm transformer block: ``x + attn(norm1(x))``, then ``x + ff(norm2(x))``."""

    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.emb_dim, eps=LAYER_NORM_EPS)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.norm2 = nn.LayerNorm(config.emb_dim, eps=LAYER_NORM_EPS)
        self.ff = FeedForward(config)
        self.drop_shortcut = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, kv_cache: KVCache | None, attn_mask: Tensor | None) -> Tensor:
        """The block on ``x`` [B, T, emb_dim]; the attention gets ``kv_cache`` and ``attn_mask``."""
        x = x + self.drop_shortcut(self.attn(self.norm1(x), kv_cache, attn_mask))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ weight.T`` ([N, D] @ [D, V]) against ``targets`` [N],
    ``chunk`` rows at a time, ``IGNORE_INDEX`` skipped.

    The gradients are computed in the same pass, chunk by chunk, from the chunk's softmax (whose
    gradient is ``softmax - one_hot(target)``), so neither the [N, V] logits nor their softmax
    ever exist whole, and the backward pass only scales the stored gradients by the incoming one.
    The matrix products are the ones autograd would do (one forward, two backward), none is
    recomputed; a gradient nobody asks for (a frozen head, evaluation) is not computed.

    Each chunk's logits are held transposed, [V, chunk] (``weight @ h.T``): on the CPU (MKL,
    2 threads) that product runs about a third faster than ``h @ weight.T`` into [chunk, V]
    (0.26 s against 0.34 s for 512 rows of gpt2-small), the two gradient products a little.
    Measured on gpt2-small's head (loss, forward and backward, interleaved, median of paired
    ratios, four runs), this takes 0.82-0.97 of the time of ``F.cross_entropy`` on the full
    logits at 512 to 4,096 positions, where row-wise chunks of 256 took 1.02-1.10 (512 and
    1,024 positions).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk):
        valid_all = targets != IGNORE_INDEX
        count = valid_all.sum()
        total = hidden.new_zeros((), dtype=torch.float32)
        want_hidden, want_weight = ctx.needs_input_grad[:2]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.empty_like(weight) if want_weight else None
        for start in range(0, hidden.shape[0], chunk):
            h, valid = hidden[start : start + chunk], valid_all[start : start + chunk]
            target = targets[start : start + chunk].where(valid, 0)
            logits = (weight @ h.T).float()  # [V, chunk]
            lse = logits.logsumexp(0)
            picked = logits.gather(0, target[None]).squeeze(0)
            total += ((lse - picked) * valid).sum()
            if not (want_hidden or want_weight):
                continue
            grad = logits.sub_(lse).exp_()
            grad[target, torch.arange(len(target), device=grad.device)] -= 1.0
            grad = grad.mul_(valid / count).to(h.dtype)
            if want_hidden:
                grad_hidden[start : start + chunk] = grad.T @ weight
            if want_weight:  # in place, so in the weight's dtype under autocast too
                beta = 0 if start == 0 else 1  # 0: the empty buffer's content is ignored
                grad_weight.addmm_(grad.to(weight.dtype), h.to(weight.dtype), beta=beta)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total / count

    @staticmethod
    def backward(ctx, grad_loss):
        # In place: the stored gradients belong to this call alone (a second backward through
        # the same graph fails autograd's check of saved tensors rather than scaling twice).
        grads = [None if g is None else g.mul_(grad_loss.to(g.dtype)) for g in ctx.saved_tensors]
        return *grads, None, None


class GPT(nn.Module):
    """A GPT-2 style language model mapping token ids [B, T] to logits [B, T, outputs].

    ``out_head`` may be replaced (e.g. by ``nn.Linear(emb_dim, num_classes)`` for
    classification); ``forward`` then returns that head's outputs at every position.

    ``activation_checkpointing`` (off by default; not in the config as it changes no result)
    makes training recompute each block's activations in the backward pass instead of keeping
    them: activation memory drops to one block's, at the cost of a second forward.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.emb_dim)
        self.pos_emb = nn.Embedding(config.context_length, config.emb_dim)
        self.drop_emb = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.emb_dim, eps=LAYER_NORM_EPS)
        self.out_head = Linear(config.emb_dim, config.vocab_size, bias=False)
        self.activation_checkpointing = False
        # A plain list, not a ModuleList: the compiled wrappers share the blocks' parameters and
        # add no state-dict keys.
        self.compiled_blocks: list[nn.Module] | None = None
        if config.tie_weights:
            self.out_head.weight = self.tok_emb.weight
        if config.init == "gpt2":
            self.apply(self._init_weights)
            residual_std = INIT_STD / math.sqrt(2 * config.n_layers)
            for block in self.blocks:
                nn.init.normal_(block.attn.out_proj.weight, mean=0.0, std=residual_std)
                nn.init.normal_(block.ff.proj.weight, mean=0.0, std=residual_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """GPT-2's initialisation; the residual projections are scaled down afterwards so the
        residual stream's variance does not grow with depth."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def compile_blocks(self) -> None:
        """Run each block through ``torch.compile`` from now on, except with a ``KVCache`` or an
        ``attention_mask`` (generation): a growing cache would recompile at each new length.
        Blocks are compiled one by one (identical blocks share one compiled graph), which
        compiles far faster than the whole model; the head and loss stay eager (:meth:`loss` is
        already one pass)."""
        self.compiled_blocks = [torch.compile(block) for block in self.blocks]

    def forward(
        self,
        idx: Tensor,
        kv_cache: KVCache | None = None,
        attention_mask: Tensor | None = None,
        last_only: bool = False,
    ) -> Tensor:
        """Logits for every position of ``idx`` (see :meth:`hidden_states` for ``kv_cache`` and
        ``attention_mask``); with ``last_only`` for the last position only, [B, 1, outputs]:
        all generation needs, without the head's cost over the whole prompt."""
        hidden = self.hidden_states(idx, kv_cache, attention_mask)
        return self.out_head(hidden[:, -1:] if last_only else hidden)

    def loss(self, idx: Tensor, targets: Tensor) -> Tensor:
        """Mean next-token cross-entropy of ``forward(idx)`` against ``targets`` [B, T]
        (``IGNORE_INDEX`` skipped), as ``F.cross_entropy`` on the full logits gives it.

        A plain vocabulary head runs with the loss ``LOSS_CHUNK`` positions at a time (see
        :class:`_ChunkedLinearCrossEntropy`), so the [B, T, vocab] logits are never held (and
        on the CPU it is also faster than the full logits); a replaced or LoRA-adapted head takes
        the plain path.
        """
        hidden = self.hidden_states(idx)
        head = self.out_head
        if type(head) is not Linear or head.bias is not None:
            return F.cross_entropy(
                head(hidden).flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX
            )
        weight = head.weight
        if not torch.is_grad_enabled():
            hidden, weight = hidden.detach(), weight.detach()
        return _ChunkedLinearCrossEntropy.apply(
            hidden.flatten(0, 1), weight, targets.flatten(), LOSS_CHUNK
        )

    def hidden_states(
        self,
        idx: Tensor,
        kv_cache: KVCache | None = None,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """The final LayerNorm's output [B, T, emb_dim], what ``out_head`` reads.

        With ``kv_cache``, ``idx`` holds only the tokens after those already in the cache.
        ``attention_mask`` [B, T] (True or 1 at real tokens, False or 0 at padding) lets rows of
        different lengths share a batch: no token attends to padding, and a row's real tokens
        take positions 0, 1, ... from its first one, so each row computes what it computes alone
        (the outputs at padding are meaningless). Without a mask, and without padding in the
        cache, every position is real: the plain causal path training takes.
        """
        if idx.dim() != 2 or idx.shape[1] == 0:
            raise ValueError(
                f"idx must be token ids of shape [batch, time>0], got {list(idx.shape)}"
            )
        if attention_mask is not None and attention_mask.shape != idx.shape:
            raise ValueError(
                f"attention_mask must have idx's shape {list(idx.shape)}, got "
                f"{list(attention_mask.shape)}"
            )
        past = len(kv_cache) if kv_cache is not None else 0
        batch, time = idx.shape
        if past + time > self.config.context_length:
            raise ValueError(
                f"sequence of {time} tokens"
                + (f" after {past} cached" if past else "")
                + f" exceeds the model's context_length of {self.config.context_length}"
            )
        real = None if attention_mask is None else attention_mask.bool()
        if kv_cache is not None:
            kv_cache.append(batch, time, real)
            real = kv_cache.mask
        attn_mask = None
        if real is None:
            positions = torch.arange(past, past + time, device=idx.device)
        else:
            positions = (real.cumsum(dim=1) - 1).clamp(min=0)[:, past:]
            attn_mask = padding_attention_mask(real, time)
        x = self.drop_emb(self.tok_emb(idx) + self.pos_emb(positions))
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        plain = kv_cache is None and attn_mask is None
        blocks = (self.compiled_blocks or self.blocks) if plain else self.blocks
        for block in blocks:
            if recompute and plain:
                x = checkpoint(block, x, None, None, use_reentrant=False)
            else:
                x = block(x, kv_cache, attn_mask)
        return self.final_norm(x)

    def flops_per_token(self, seq_len: int, training: bool = True) -> int:
        """FLOPs per token of windows of ``seq_len`` tokens, of a training step (forward and
        backward) or with ``training=False`` a forward pass alone: the figure MFU divides by.

        Counted as PaLM's appendix and nanoGPT do: 2 per multiply-add of every weight matrix
        (``out_head`` included, whatever its width; embedding lookups are free) plus the attention
        over the full window (the causal half not subtracted); backward costs twice the forward.
        Frozen weights count as trained, as MFU conventionally does.
        """
        matrices = sum(
            m.in_features * m.out_features for m in self.modules() if isinstance(m, nn.Linear)
        )
        attention = 2 * self.config.n_layers * seq_len * self.config.emb_dim
        forward = 2 * (matrices + attention)
        return 3 * forward if training else forward


def has_classifier_head(model: GPT) -> bool:
    """Whether ``out_head`` was replaced by a head other than the vocabulary projection."""
    head = model.out_head
    return not (isinstance(head, nn.Linear) and head.out_features == model.config.vocab_size)
