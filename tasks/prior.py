"""A small GPT-style prior over token grids: the second stage of the generation tasks.

Decoder-only transformer (Radford et al. 2018/2019, "GPT-2"; used as the image prior of VQGAN,
Esser et al., arXiv:2012.09841, sec. 3.2) over the tokenizer's code ids in raster order: a grid
``(h, w)`` is read row by row into a sequence ``s_1 .. s_L`` (``L = h w``) and modelled as

    p(s) = prod_i p(s_i | s_<i),    loss = -(1/L) sum_i log p(s_i | s_<i)    (cross-entropy, nats)

The input at position ``i`` is ``tok(s_{i-1}) + pos_i`` with a learned start token ``s_0 = BOS``
(id ``K``, an extra row of the token embedding) and learned positional embeddings ``pos``; blocks
are pre-LayerNorm ``x + Attn(LN(x))``, ``x + MLP(LN(x))`` with causal multi-head self-attention
(position ``i`` attends to positions ``<= i`` only), MLP width 4x, GELU; a final LayerNorm and a
linear head give logits over the ``K`` codes. Weights are initialised N(0, 0.02), biases 0.

Sampling draws ``s_i ~ softmax(logits_i / T)`` restricted to the ``top_k`` largest logits, one
token at a time with a key/value cache, from a ``torch.Generator`` the caller seeds (so sampling
never touches the global RNG and is reproducible). ``T = 0`` takes the argmax.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KVCache = list[tuple[Tensor, Tensor] | None]


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position ``i`` sees positions ``j <= i`` only."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"prior width {dim} must be divisible by its number of heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, past: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``x`` (B, T, C) -> (B, T, C) and the keys/values of all positions seen so far.

        Without ``past`` the T positions attend causally among themselves; with ``past`` (the
        cached keys/values of earlier positions) ``x`` must be the single next position (T = 1),
        which may attend to every cached position and itself.
        """
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if past is not None:
            if t != 1:
                raise ValueError("with a key/value cache, feed one position at a time")
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=past is None and t > 1)
        y = y.transpose(1, 2).reshape(b, t, c)
        return self.resid_drop(self.proj(y)), (k, v)


class Block(nn.Module):
    """Pre-LN transformer block: ``x + Attn(LN(x))`` then ``x + MLP(LN(x))``."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout))

    def forward(self, x: Tensor, past: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        a, kv = self.attn(self.ln1(x), past)
        x = x + a
        return x + self.mlp(self.ln2(x)), kv


class TokenPrior(nn.Module):
    """Autoregressive prior over sequences of ``seq_len`` code ids in ``[0, vocab_size)``."""

    def __init__(self, vocab_size: int, seq_len: int, dim: int = 256, layers: int = 4, heads: int = 4,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if min(vocab_size, seq_len, dim, layers, heads) < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError("prior sizes must be >= 1 and dropout in [0, 1)")
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.bos = vocab_size  # the start token is an extra row of the embedding table
        self.tok_emb = nn.Embedding(vocab_size + 1, dim)
        self.pos_emb = nn.Parameter(torch.zeros(1, seq_len, dim))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        self.apply(self._init)
        nn.init.normal_(self.pos_emb, std=0.02)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def _flatten(self, tokens: Tensor) -> Tensor:
        seq = tokens.reshape(tokens.shape[0], -1).long()  # raster order: row-major flattening
        if seq.shape[1] != self.seq_len:
            raise ValueError(f"prior expects {self.seq_len} tokens per item, got {seq.shape[1]}")
        return seq

    def forward(self, tokens: Tensor) -> Tensor:
        """Teacher-forced logits: ``tokens`` (B, ...) with L = prod(...) ids -> (B, L, K).

        ``logits[:, i]`` predicts token ``i`` from tokens ``< i`` (position 0 sees only BOS).
        """
        seq = self._flatten(tokens)
        bos = torch.full((seq.shape[0], 1), self.bos, dtype=torch.long, device=seq.device)
        inputs = torch.cat([bos, seq[:, :-1]], dim=1)
        x = self.drop(self.tok_emb(inputs) + self.pos_emb)
        for block in self.blocks:
            x, _ = block(x)
        return self.head(self.ln_f(x))

    def nll(self, tokens: Tensor) -> Tensor:
        """Mean cross-entropy in nats per token (the training loss)."""
        logits = self(tokens)
        return F.cross_entropy(logits.reshape(-1, self.vocab_size).float(), self._flatten(tokens).reshape(-1))

    @torch.no_grad()
    def sample(self, n: int, *, temperature: float = 1.0, top_k: int | None = None,
               generator: torch.Generator | None = None, device: torch.device | str | None = None) -> Tensor:
        """Draw ``n`` sequences (n, L) token by token with a key/value cache.

        ``s_i ~ Categorical(softmax(topk(logits_i) / temperature))`` using ``generator`` (on the
        model's device) for every draw; ``temperature = 0`` is greedy decoding.
        """
        if temperature < 0:
            raise ValueError("sampling temperature must be >= 0")
        device = torch.device(device) if device is not None else self.pos_emb.device
        was_training = self.training
        self.eval()
        cache: KVCache = [None] * len(self.blocks)
        out = torch.empty(n, self.seq_len, dtype=torch.long, device=device)
        prev = torch.full((n,), self.bos, dtype=torch.long, device=device)
        for i in range(self.seq_len):
            prev = sample_logits(self.step(prev, i, cache).float(), temperature, top_k, generator)
            out[:, i] = prev
        self.train(was_training)
        return out

    def step(self, prev: Tensor, position: int, cache: KVCache) -> Tensor:
        """Logits (N, K) of token ``position`` given the previous token ``prev`` (N,) and the cache.

        ``cache`` (one entry per block, ``None`` before position 0) holds the keys/values of the
        positions before; it is updated in place. Feeding a sequence's tokens one by one gives the
        same logits as :meth:`forward` (``prev`` is BOS at position 0).
        """
        x = self.tok_emb(prev)[:, None] + self.pos_emb[:, position:position + 1]
        for j, block in enumerate(self.blocks):
            x, cache[j] = block(x, cache[j] if position > 0 else None)
        return self.head(self.ln_f(x[:, 0]))


def sample_logits(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                  generator: torch.Generator | None = None) -> Tensor:
    """One draw per row of ``logits`` (N, K): top-k filtering, temperature, then a categorical draw."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
