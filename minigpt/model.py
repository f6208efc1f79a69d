"""A GPT language model, written from scratch.

Read it top to bottom: configuration, attention, MLP, block, the model, then generation.
Names follow GPT-2 (wte, wpe, h, ln_f, c_attn, c_proj, c_fc) so readers of other GPT code feel
at home. Shapes in comments: B batch, T time (context), C channels (n_embd), H heads,
D head size (C // H), V vocabulary.

Options that studies of training instability need:
- norm_position: "pre" (GPT-2; LayerNorm before each sublayer) or "post" (original
  Transformer; LayerNorm after each residual addition), which is much harder to train without
  warmup.
- qk_layernorm: LayerNorm on queries and keys per head, which bounds the attention logits
  (Dehghani et al. 2023; Wortsman et al. 2023).
- z_loss: adds z_loss * mean(log Z)^2 to the loss, where log Z is the log-partition of the
  output softmax, which keeps the output logits from drifting (PaLM; Wortsman et al. 2023).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab_size: int = 4096  # the tokenizer's; the embedding is padded up to a multiple of 64
    block_size: int = 128  # longest context the model can attend over
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False  # biases in Linear and LayerNorm layers
    norm_position: str = "pre"  # "pre" or "post"
    qk_layernorm: bool = False
    z_loss: float = 0.0  # coefficient of the z-loss term; 0 turns it off

    @classmethod
    def build(cls, model_cfg, vocab_size: int) -> "GPTConfig":
        """From the run's model config (config.ModelConfig: a field of the same name for each
        of ours) and the tokenizer's vocabulary size."""
        return cls(vocab_size=vocab_size, **{f.name: getattr(model_cfg, f.name) for f in fields(cls)
                                             if f.name != "vocab_size"})

    @property
    def padded_vocab_size(self) -> int:
        # A multiple of 64 gives the output matmul shapes that tensor cores like.
        return (self.vocab_size + 63) // 64 * 64


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head = config.n_head
        self.head_size = config.n_embd // config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.q_ln = nn.LayerNorm(self.head_size, bias=config.bias) if config.qk_layernorm else None
        self.k_ln = nn.LayerNorm(self.head_size, bias=config.bias) if config.qk_layernorm else None
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        # When set (by the trainer, on a logging step), forward() stores the largest
        # pre-softmax attention logit here. Off by default: it costs a second QK^T product.
        self.record_max_logit = False
        self.max_logit: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, H, T, D)
        q = q.view(B, T, self.n_head, self.head_size).transpose(1, 2)
        k = k.view(B, T, self.n_head, self.head_size).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_size).transpose(1, 2)
        if self.q_ln is not None:
            # Under autocast LayerNorm returns float32. Outside vmap autocast casts SDPA's inputs
            # back to one dtype; inside vmap (the stacked runs) it does not, and SDPA refuses
            # mixed dtypes: the cast to v's dtype is what autocast would do (a no-op in fp32).
            q, k = self.q_ln(q).to(v.dtype), self.k_ln(k).to(v.dtype)

        if kv_cache is not None:
            # Generation: append this call's keys and values and attend over everything cached.
            k, v = kv_cache.append(layer, k, v)
        # A single new query attends to every cached key, so it needs no mask; a longer
        # chunk (training, or the prompt) is causal. A chunk after a non-empty cache does not
        # occur: generate() feeds the prompt into an empty cache, then one token at a time.
        is_causal = T > 1
        if self.record_max_logit:
            self.max_logit = self._max_logit(q, k, is_causal)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=is_causal
        )  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def _max_logit(self, q, k, is_causal):
        with torch.no_grad():
            logits = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_size)  # (B, H, T, T)
            if is_causal:
                T = q.size(-2)
                mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
                logits = logits.masked_fill(~mask, float("-inf"))
            return logits.max().float()


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.pre_ln = config.norm_position == "pre"
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, kv_cache=None, layer=0):
        if self.pre_ln:  # x + f(LN(x)): the residual stream itself is never normalised
            x = x + self.attn(self.ln_1(x), kv_cache, layer)
            x = x + self.mlp(self.ln_2(x))
        else:  # LN(x + f(x)): every sublayer's output passes through a LayerNorm
            x = self.ln_1(x + self.attn(x, kv_cache, layer))
            x = self.ln_2(x + self.mlp(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.norm_position not in ("pre", "post"):
            raise ValueError(f"norm_position must be 'pre' or 'post', got {config.norm_position!r}")
        self.config = config
        V = config.padded_vocab_size
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(V, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                # Post-LN blocks already end in a LayerNorm; a second one would be a no-op.
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias)
                if config.norm_position == "pre"
                else nn.Identity(),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, V, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied input and output embeddings

        # GPT-2 initialisation: N(0, 0.02) everywhere, and the projections that write into the
        # residual stream scaled by 1/sqrt(2 * n_layer), so the stream's variance does not grow
        # with depth (two such projections per block).
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

        # Set by forward() when the z-loss is on or `record_logz` is set: mean log Z of the step.
        self.record_logz = False
        self.logz_mean: torch.Tensor | None = None
        self.z_term: torch.Tensor | None = None  # z_loss * mean(log Z^2) of the last forward, detached

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; by default without the position embedding (the token embedding
        is shared with the output layer, so it does count), as in the usual FLOPs estimate."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def describe(self) -> str:
        c = self.config
        return (f"{self.num_params():,} parameters (without position embeddings), {c.n_layer} layers, {c.n_embd} wide, "
                f"{c.n_head} heads, context {c.block_size}, vocabulary {c.vocab_size} (padded to "
                f"{c.padded_vocab_size}), {c.norm_position}-LN" + (", QK-layernorm" if c.qk_layernorm else "")
                + (f", z-loss {c.z_loss}" if c.z_loss else ""))

    def forward(self, idx, targets=None, kv_cache: KVCache | None = None, with_z_loss: bool = True):
        """idx (B, T) token ids -> (logits (B, T, V), loss or None).

        With targets (B, T), the loss is the mean cross-entropy over all positions, plus the
        z-loss term when it is on and with_z_loss (training); the term itself, detached, is left
        in self.z_term, so the records can report the cross-entropy and the term apart. With a
        kv_cache, positions continue from what it holds.
        """
        B, T = idx.shape
        start = kv_cache.length if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(
                f"sequence of length {start + T} is longer than block_size {self.config.block_size}"
            )
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for i, block in enumerate(self.transformer.h):
            x = block(x, kv_cache, i)
        x = self.transformer.ln_f(x)
        if kv_cache is not None:
            kv_cache.length += T
        logits = self.lm_head(x)  # (B, T, V)

        if targets is None:
            return logits, None
        # The loss in float32 whatever the autocast dtype: a bf16 softmax over V loses digits.
        flat = logits.view(-1, logits.size(-1)).float()
        loss = F.cross_entropy(flat, targets.reshape(-1))
        if self.config.z_loss > 0 or self.record_logz:
            logz = torch.logsumexp(flat, dim=-1)
            self.logz_mean = logz.detach().mean()
            if self.config.z_loss > 0:
                z_term = self.config.z_loss * (logz**2).mean()
                self.z_term = z_term.detach()
                if with_z_loss:
                    loss = loss + z_term
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 use_cache: bool = True, generator: torch.Generator | None = None):
        """Append max_new_tokens sampled tokens to idx (B, T) and return the whole sequence.

        temperature 0 picks the most likely token. With use_cache, keys and values of earlier
        positions are kept and each new token costs one position's work; once the sequence
        outgrows block_size, the context is cropped to its last block_size tokens and
        recomputed, which is exactly what use_cache=False does at every step.
        """
        was_training = self.training
        self.eval()
        cache = None
        for _ in range(max_new_tokens):
            if use_cache and idx.size(1) <= self.config.block_size:
                if cache is None:  # first token: feed the whole prompt
                    cache = KVCache(self.config)
                    logits, _ = self(idx, kv_cache=cache)
                else:  # later tokens: feed only the newest one
                    logits, _ = self(idx[:, -1:], kv_cache=cache)
            else:
                logits, _ = self(idx[:, -self.config.block_size :])
            logits = logits[:, -1, : self.config.vocab_size].float()  # padding ids are never sampled
            idx_next = sample_next(logits, temperature, top_k, generator)
            idx = torch.cat((idx, idx_next), dim=1)
        self.train(was_training)
        return idx


def sample_next(logits, temperature: float, top_k: int | None, generator=None):
    """One token id per row of logits (B, V) -> (B, 1)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


class KVCache:
    """Keys and values of the positions seen so far, room for block_size positions."""

    def __init__(self, config: GPTConfig):
        self.n_layer, self.block_size = config.n_layer, config.block_size
        self.k = self.v = None  # allocated at the first append, in the dtype the keys have
        self.length = 0  # positions already stored (advanced by GPT.forward after all layers)

    def append(self, layer: int, k, v):
        B, H, T, D = k.shape
        if self.k is None:
            shape = (self.n_layer, B, H, self.block_size, D)
            self.k = torch.empty(shape, device=k.device, dtype=k.dtype)
            self.v = torch.empty(shape, device=v.device, dtype=v.dtype)
        end = self.length + T
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]
