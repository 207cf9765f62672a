"""A decode loop's model side without transformers' per-step machinery: `KVDecoder` runs a
Llama-family causal LM (Llama, Mistral, Qwen2) on the model's own modules and weights, with a KV cache
preallocated for the whole generation.

Why: on the tiny preset a decode step at batch 128 spent ~10 of its ~16 ms in Python
bookkeeping (`generate`'s logits processors and stopping criteria, the mask builder, the
`DynamicCache` growing by `torch.cat` every step), and ~1.5 ms in matmuls
(issue 17's profile, BENCHMARKS.md "Sampler: own decode loop"). Here a step is the layers'
own ops: RMSNorm, q/k/v projections, RoPE at each row's position, one write into the cache,
`scaled_dot_product_attention` over the filled columns, the MLP, the LM head.

The ops are transformers' (same order, dtypes and kernels as `modeling_llama`), so logits
match the HF forward to float rounding (tests/test_decoding.py checks greedy equality with
`generate` and logits against `model(...)` step by step). It reads the model's parameters in
place (no copy), so it always decodes the current weights of a training policy.

Left padding, as `generate` uses it: every row's next token sits in the same cache column, a
row's padding is masked out of attention, and positions count a row's real tokens
(`attention_mask.cumsum - 1`, as `generate` computes them).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SUPPORTED = ("llama", "mistral", "qwen2")


def unsupported_reason(model) -> str | None:
    """Why `KVDecoder` cannot run `model` (None when it can). Anything unusual (scaled RoPE,
    sliding windows, other architectures) falls back to transformers' own forward."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in SUPPORTED:
        return f"model type {getattr(cfg, 'model_type', None)!r} is not one of {SUPPORTED}"
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        return f"rope type {rope.get('rope_type')!r} (only plain RoPE)"
    if getattr(cfg, "use_sliding_window", False) or (cfg.model_type == "mistral" and getattr(cfg, "sliding_window", None)):
        return "sliding-window attention"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r} (only silu)"
    if getattr(cfg, "mlp_bias", False):
        return "MLP bias"
    if getattr(cfg, "_attn_implementation", "sdpa") not in ("sdpa", "eager", None):
        return f"attention implementation {cfg._attn_implementation!r}"
    if not hasattr(model, "model") or not hasattr(model.model, "layers"):
        return "no model.layers"
    if any(hasattr(p, "ds_id") for p in model.parameters()):
        return "DeepSpeed ZeRO-3 partitioned parameters (gathered only inside the model's own forward)"
    return None


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class KVDecoder:
    """`prefill(ids, mask, capacity)` then `step(tokens)` once per new token; `select(keep)`
    drops finished rows. Every method returns the last position's logits, one row each."""

    def __init__(self, model):
        reason = unsupported_reason(model)
        if reason:
            raise ValueError(f"KVDecoder cannot run this model: {reason}")
        cfg = model.config
        self.model = model
        self.layers = list(model.model.layers[: cfg.num_hidden_layers])
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scale = self.head_dim ** -0.5
        rotary = model.model.rotary_emb
        self.inv_freq = rotary.inv_freq.float()
        self.rope_scale = float(getattr(rotary, "attention_scaling", 1.0))
        self.k = self.v = None
        self._unshare()

    def _unshare(self) -> None:
        # shared-prefix state (`repeat(n)`): the prefix's keys / values once per
        # group (G, kv heads, L, head dim), its mask (G, L), each row's slot g * n + j
        self.kp = self.vp = self.maskp = self.slot = None
        self._prefix_full = False
        self.n = 1
        self.offset = 0  # cache column of the rows' own cache's first column (L when shared)

    # --- the model -------------------------------------------------------------------------
    def _rope(self, positions: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq.to(positions.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.rope_scale).to(dtype), (emb.sin() * self.rope_scale).to(dtype)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, start: int, attn_mask: torch.Tensor | None,
                 last_only: bool = True) -> torch.Tensor:
        """ids, positions: (B, T) for cache columns [start, start + T); attn_mask: bool
        (B, 1, T, start + T) or None (attend to every filled column)."""
        B, T = ids.shape
        x = self.model.model.embed_tokens(ids)
        cos, sin = self._rope(positions, x.dtype)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        end = start + T
        rep = self.n_heads // self.n_kv
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(B, T, -1, self.head_dim).transpose(1, 2)
            k = attn.k_proj(h).view(B, T, -1, self.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(B, T, -1, self.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            off = self.offset
            self.k[i][:, :, start - off:end - off] = k
            self.v[i][:, :, start - off:end - off] = v
            keys, values = self.k[i][:, :, :end - off], self.v[i][:, :, :end - off]
            if self.kp is not None:  # one query per row after a shared prefix (see `repeat`)
                out = self._shared_attention(i, q, keys, values, attn_mask)
            elif rep > 1 and T == 1:  # one query: attend on the kv heads, the group as the query axis
                out = F.scaled_dot_product_attention(q.reshape(B, self.n_kv, rep, self.head_dim), keys, values,
                                                     attn_mask=attn_mask, scale=self.scale)
            else:
                if rep > 1:
                    keys, values = keys.repeat_interleave(rep, 1), values.repeat_interleave(rep, 1)
                out = F.scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask, scale=self.scale,
                                                     is_causal=attn_mask is None and T > 1)
            out = out.reshape(B, self.n_heads, T, self.head_dim).transpose(1, 2).reshape(B, T, -1)
            x = x + attn.o_proj(out)
            h = layer.post_attention_layernorm(x)
            mlp = layer.mlp
            x = x + mlp.down_proj(F.silu(mlp.gate_proj(h)) * mlp.up_proj(h))
        if last_only:
            x = x[:, -1:]
        x = self.model.model.norm(x)
        return self.model.lm_head(x)

    def _shared_attention(self, i: int, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                          mask: torch.Tensor | None) -> torch.Tensor:
        """One decode step's attention when the rows' prefixes are shared: each group's prefix
        keys / values are read once for its n rows (not n copies), the rows' own columns as
        usual, one softmax over both. q: (B, H, 1, d); keys, values: the rows' own columns
        (B, kv, S, d); mask: bool (B, 1, 1, L + S) or None. Returns (B, H, 1, d)."""
        B, H, _, d = q.shape
        kp, vp = self.kp[i], self.vp[i]
        G, kv, L, _ = kp.shape
        n, rep, S = self.n, H // kv, keys.shape[2]
        full = B == G * n  # no row has left: slots are rows, no scatter needed

        def to_groups(x: torch.Tensor) -> torch.Tensor:  # (B, H, m) by slot -> (G, kv, n * rep, m)
            if not full:
                x = x.new_zeros((G * n,) + x.shape[1:]).index_copy_(0, self.slot, x)
            return x.reshape(G, n, kv, rep, -1).permute(0, 2, 1, 3, 4).reshape(G, kv, n * rep, -1)

        def to_rows(x: torch.Tensor) -> torch.Tensor:  # (G, kv, n * rep, m) -> (B, H, m)
            x = x.view(G, kv, n, rep, -1).permute(0, 2, 1, 3, 4).reshape(G * n, H, -1)
            return x if full else x.index_select(0, self.slot)

        q1 = q[:, :, 0]
        scores = torch.cat([to_rows(torch.matmul(to_groups(q1), kp.transpose(-1, -2))),
                            torch.matmul(q1.view(B, kv, rep, d), keys.transpose(-1, -2)).view(B, H, S)], -1)
        scores = scores * self.scale
        if mask is not None:
            scores = scores.masked_fill(~mask[:, 0], float("-inf"))
        p = scores.softmax(-1)
        out = to_rows(torch.matmul(to_groups(p[..., :L]), vp))
        out = out + torch.matmul(p[..., L:].reshape(B, kv, rep, S), values).view(B, H, d)
        return out.view(B, H, 1, d)

    # --- the loop's interface ----------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, capacity: int,
                positions_from_mask: bool = True) -> torch.Tensor:
        """Encode left-padded `ids` (B, L) with `mask` (1 = token) into a cache with room for
        `capacity` columns in all; the last column's logits (B, V). `positions_from_mask`:
        positions count each row's tokens (as `generate`); False: column numbers (as a plain
        `model(ids, mask)` call), the same attention under RoPE up to rounding."""
        B, L = ids.shape
        if capacity < L:
            raise ValueError(f"capacity {capacity} < prompt length {L}")
        self._unshare()
        ref = self.model.model.embed_tokens.weight
        shape = (B, self.n_kv, capacity, self.head_dim)
        self.k = [torch.zeros(shape, dtype=ref.dtype, device=ref.device) for _ in self.layers]
        self.v = [torch.zeros(shape, dtype=ref.dtype, device=ref.device) for _ in self.layers]
        mask = mask.bool()
        self.mask = torch.zeros((B, capacity), dtype=torch.bool, device=ids.device)
        self.mask[:, :L] = mask
        if positions_from_mask:
            positions = (mask.long().cumsum(-1) - 1).masked_fill(~mask, 1)
            self.pos = mask.long().sum(-1)
        else:
            positions = torch.arange(L, device=ids.device).expand(B, L)
            self.pos = torch.full((B,), L, dtype=torch.long, device=ids.device)
        self.length = L
        causal = torch.ones((L, L), dtype=torch.bool, device=ids.device).tril()
        attn_mask = None if bool(mask.all()) else (causal[None, None] & mask[:, None, None, :])
        if attn_mask is not None:
            # a fully padded query row (a pad column) attends to itself, so it gives no NaN
            attn_mask = attn_mask | torch.eye(L, dtype=torch.bool, device=ids.device)[None, None]
        return self._forward(ids, positions, 0, attn_mask)[:, -1]

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, live: torch.Tensor | None = None) -> torch.Tensor:
        """Feed one token per row (B,); `live` (bool, B): rows whose token counts (a finished
        row kept in the batch is fed padding and masked, as `generate` does not). Logits (B, V)."""
        col, off = self.length, self.offset
        if col - off >= self.mask.shape[1]:
            raise RuntimeError(f"KV cache full ({col} columns)")
        self.mask[:, col - off] = True if live is None else live
        self.length = col + 1
        own = self.mask[:, :col + 1 - off]
        if self.kp is None:
            attn_mask = None if bool(own.all()) else own[:, None, None, :]
        elif self._prefix_full and bool(own.all()):
            attn_mask = None
        else:
            attn_mask = torch.cat([self.maskp.index_select(0, self.slot // self.n), own], 1)[:, None, None, :]
        logits = self._forward(tokens[:, None], self.pos[:, None], col, attn_mask)[:, -1]
        self.pos = self.pos + 1
        return logits

    def repeat(self, n: int) -> None:
        """Each row n times in a row (n samples from one prefilled prompt). The prefilled
        columns are not copied: each group of n rows reads its prefix's keys and
        values once per step (`_shared_attention`; on CPU a decode step's attention is bound by
        reading the cache, benchmarks/bench_sampler.py), and the rows get caches of their own
        for the columns after it. Same logits up to float rounding."""
        if n == 1:
            return
        if self.kp is not None:
            raise RuntimeError("repeat twice")
        L = self.length
        self.kp = [t[:, :, :L].contiguous() for t in self.k]
        self.vp = [t[:, :, :L].contiguous() for t in self.v]
        self.maskp = self.mask[:, :L].contiguous()
        self._prefix_full = bool(self.maskp.all())
        G, kv, cap, d = self.k[0].shape
        self.k = [t.new_zeros((G * n, kv, cap - L, d)) for t in self.k]
        self.v = [t.new_zeros((G * n, kv, cap - L, d)) for t in self.v]
        self.mask = self.mask[:, L:].repeat_interleave(n, 0)
        self.pos = self.pos.repeat_interleave(n, 0)
        self.slot = torch.arange(G * n, device=self.mask.device)
        self.n, self.offset = n, L

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the rows `keep` (indices) in the cache, mask and positions."""
        self.k = [t.index_select(0, keep) for t in self.k]
        self.v = [t.index_select(0, keep) for t in self.v]
        self.mask = self.mask.index_select(0, keep)
        self.pos = self.pos.index_select(0, keep)
        if self.slot is not None:
            self.slot = self.slot.index_select(0, keep)
