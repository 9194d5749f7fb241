"""The decoder math of Llama-family models (llama, mistral, qwen2) for the native engine.

Why not `model.generate`: on a 2-core CPU its per-step cost is dominated by copying the KV cache
(every step concatenates it), building padded masks and repeating KV heads. Here the weights are
fused (q/k/v in one matmul, gate/up in one), the shared prompt prefix's KV is stored once and
attended by every sequence with one matmul per KV head, and each sequence owns a pre-allocated
KV slot that decode steps write into in place. On CPUs with native bf16, weights are also kept
in oneDNN's blocked layout (`mkldnn_linear`): a decode step's few-row matmuls then stream them at
~1.7x the speed of `F.linear` on plain weights (same bits, checked at load on the model's own matrices).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from selfguide.errors import BackendUnavailable

SUPPORTED_TYPES = ("llama", "mistral", "qwen2")


@dataclass
class Layer:
    ln1: torch.Tensor
    qkv: "Linear"
    o: "Linear"
    ln2: torch.Tensor
    gate_up: "Linear"
    down: "Linear"


def check_supported(config: Any) -> None:
    """Refuse architectures whose math differs from the one implemented here (use the hf backend)."""
    kind = getattr(config, "model_type", "?")
    if kind not in SUPPORTED_TYPES:
        raise BackendUnavailable(
            f"the native backend runs {', '.join(SUPPORTED_TYPES)} models, not '{kind}'; set model.backend: hf"
        )
    if kind == "qwen2" and getattr(config, "use_sliding_window", False):
        raise BackendUnavailable("the native backend does not implement sliding-window attention; set model.backend: hf")


class Linear:
    """y = x W^T + b: with W in oneDNN's blocked layout when that gives F.linear's exact bits,
    else plain F.linear."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], packed: bool):
        self.bias = bias
        self.weight = _reorder(weight) if packed else weight
        self.packed = packed

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


def _reorder(weight: torch.Tensor) -> torch.Tensor:
    # batch-size hint 16: decode steps run 1-32 rows (prefill rows measured equally fast either way)
    return torch.ops.mkldnn._reorder_linear_weight(weight, 16)


def can_pack(weights: list[tuple[torch.Tensor, Optional[torch.Tensor]]]) -> bool:
    """Blocked weights only for bf16 on CPU, and only if this torch build gives bit-identical
    results with them on the model's own matrices (every distinct linear of a layer and the output
    head) at decode and prefill row counts (fp32 rounds differently; the ops are torch-internal
    and may change)."""
    w0 = weights[0][0]
    if w0.dtype != torch.bfloat16 or w0.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        for w, b in weights:
            lin = Linear(w, b, packed=True)
            for rows in (1, 7, 40):
                x = torch.randn(1, rows, w.shape[1], generator=gen).to(w.dtype)
                if not torch.equal(lin(x), F.linear(x, w, b)):
                    return False
        return True
    except (RuntimeError, AttributeError):
        return False


def _probe_weights(model: Any) -> list[tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """The first layer's fused qkv, o, fused gate/up and down matrices and the output head, as
    the decoder will use them."""
    a, m = model.model.layers[0].self_attn, model.model.layers[0].mlp
    with torch.no_grad():
        return [(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]), _cat_bias(a.q_proj, a.k_proj, a.v_proj)),
                (a.o_proj.weight, a.o_proj.bias),
                (torch.cat([m.gate_proj.weight, m.up_proj.weight]), _cat_bias(m.gate_proj, m.up_proj)),
                (m.down_proj.weight, m.down_proj.bias), (model.lm_head.weight, None)]


def _cat_bias(*linears: Any) -> Optional[torch.Tensor]:
    if all(m.bias is None for m in linears):
        return None
    return torch.cat([m.bias if m.bias is not None else torch.zeros(m.out_features, dtype=m.weight.dtype) for m in linears])


class LlamaDecoder:
    """Inference-only view of a transformers Llama-family model: same weights, fused layout."""

    def __init__(self, model: Any, pack: bool = True):
        cfg = model.config
        check_supported(cfg)
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.groups = self.n_heads // self.n_kv
        self.eps = cfg.rms_norm_eps
        self.scale = self.head_dim**-0.5
        self.window = getattr(cfg, "sliding_window", None) if kind_uses_window(cfg) else None
        inner = model.model
        self.embed = inner.embed_tokens.weight
        self.norm = inner.norm.weight
        self.packed = pack and can_pack(_probe_weights(model))
        self.lm_head = Linear(model.lm_head.weight, None, self.packed)
        self.rotary = inner.rotary_emb
        self.dtype = self.embed.dtype
        self.act = inner.layers[0].mlp.act_fn
        self.layers = []
        with torch.no_grad():
            for layer in inner.layers:
                a, m = layer.self_attn, layer.mlp
                self.layers.append(Layer(
                    ln1=layer.input_layernorm.weight,
                    qkv=Linear(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).contiguous(),
                               _cat_bias(a.q_proj, a.k_proj, a.v_proj), self.packed),
                    o=Linear(a.o_proj.weight, a.o_proj.bias, self.packed),
                    ln2=layer.post_attention_layernorm.weight,
                    gate_up=Linear(torch.cat([m.gate_proj.weight, m.up_proj.weight]).contiguous(),
                                   _cat_bias(m.gate_proj, m.up_proj), self.packed),
                    down=Linear(m.down_proj.weight, m.down_proj.bias, self.packed),
                ))
        self._rope_len = 0
        self._cos = self._sin = torch.empty(0)

    # -- pieces ------------------------------------------------------------------------------

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # as transformers' LlamaRMSNorm: statistics in fp32, weight applied in the model dtype
        return w * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)

    def rope_table(self, length: int) -> None:
        """cos/sin for positions [0, length): computed by the model's own rotary module (rope scaling included)."""
        if length <= self._rope_len:
            return
        length = max(length, 2 * self._rope_len)
        pos = torch.arange(length, device=self.embed.device)[None]
        probe = torch.zeros(1, dtype=self.dtype, device=self.embed.device)
        cos, sin = self.rotary(probe, pos)
        self._cos, self._sin = cos[0], sin[0]
        self._rope_len = length

    def _angles(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [B, 1, T, d] for positions pos [B, T]: looked up once per pass, used by every layer."""
        return self._cos[pos].unsqueeze(1), self._sin[pos].unsqueeze(1)

    @staticmethod
    def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [B, heads, T, d]."""
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def _qkv(self, layer: Layer, x: torch.Tensor, angles: tuple[torch.Tensor, torch.Tensor]):
        B, T, _ = x.shape
        qkv = layer.qkv(self._rms(x, layer.ln1))
        H, nkv, d = self.n_heads, self.n_kv, self.head_dim
        # q and k heads are rotated together: the same math per element, half the ops
        qk = self._rope(qkv[..., : (H + nkv) * d].view(B, T, H + nkv, d).transpose(1, 2), *angles)
        v = qkv[..., (H + nkv) * d :].view(B, T, nkv, d).transpose(1, 2)
        return qk[:, :H], qk[:, H:], v

    def _finish_layer(self, layer: Layer, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        B, T = x.shape[:2]
        x = x + layer.o(attn.transpose(1, 2).reshape(B, T, -1))
        gate, up = layer.gate_up(self._rms(x, layer.ln2)).chunk(2, dim=-1)
        return x + layer.down(self.act(gate) * up)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self._rms(h, self.norm)).float()

    # -- passes ------------------------------------------------------------------------------

    def prefill(
        self,
        seqs: list[list[int]],
        prefix: Optional[list[tuple[torch.Tensor, torch.Tensor]]],
        start: int,
        middles: Optional[list[Optional[torch.Tensor]]] = None,
    ):
        """Encode token sequences that each follow `prefix` (positions start..), in one batch
        (right-padded: causality already hides the padding from every real token). Row b may also
        follow its own already-encoded tokens `middles[b]` (KV [layers, 2, n_kv, m_b, d], positions
        start..start+m_b; its tokens then start at start+m_b). Returns per layer K/V [B, n_kv, T, d]
        (row b valid up to len(seqs[b])) and the logits after each sequence's last token [B, vocab]."""
        kv, x = self._forward(seqs, prefix, start, middles)
        last = torch.tensor([len(s) - 1 for s in seqs], device=x.device)
        return kv, self.logits(x[torch.arange(len(seqs), device=x.device), last])

    def all_logits(
        self,
        seqs: list[list[int]],
        prefix: Optional[list[tuple[torch.Tensor, torch.Tensor]]],
        start: int,
        middles: Optional[list[Optional[torch.Tensor]]] = None,
    ) -> torch.Tensor:
        """Logits [B, T, vocab] after every token of short rows (teacher-forced scoring of a few
        continuation tokens that follow a prefix and each row's own encoded prompt)."""
        _, x = self._forward(seqs, prefix, start, middles)
        return self.logits(x)

    def _forward(
        self,
        seqs: list[list[int]],
        prefix: Optional[list[tuple[torch.Tensor, torch.Tensor]]],
        start: int,
        middles: Optional[list[Optional[torch.Tensor]]],
    ):
        """The layers of a prefill: per layer K/V and the final hidden states [B, T, hidden]."""
        B, T = len(seqs), max(len(s) for s in seqs)
        dev = self.embed.device
        mids = middles if middles is not None else [None] * B
        m_lens = [0 if m is None else m.shape[3] for m in mids]
        M = max(m_lens)
        self.rope_table(start + M + T + 1)
        tokens = torch.tensor([s + [0] * (T - len(s)) for s in seqs], device=dev)
        pos = start + torch.tensor(m_lens, device=dev)[:, None] + torch.arange(T, device=dev)[None]
        angles = self._angles(pos)
        x = F.embedding(tokens, self.embed)
        # Additive mask over [prefix | middle | own tokens]: the prefix is fully visible, a row's
        # middle up to its length, own tokens causally.
        mask = torch.full((T, start + T), float("-inf"), device=dev).triu(start + 1).to(self.dtype)
        if M:
            hidden = torch.arange(M, device=dev)[None] >= torch.tensor(m_lens, device=dev)[:, None]  # [B, M]
            mid_mask = torch.zeros(B, M, dtype=self.dtype, device=dev).masked_fill(hidden, float("-inf"))
            mask = torch.cat([
                mask[None, :, :start].expand(B, -1, -1), mid_mask[:, None].expand(-1, T, -1), mask[None, :, start:].expand(B, -1, -1)
            ], -1)[:, None]
            mid_kv = torch.zeros(len(self.layers), 2, B, self.n_kv, M, self.head_dim, dtype=self.dtype, device=dev)
            for b, m in enumerate(mids):
                if m is not None:
                    mid_kv[:, :, b, :, : m_lens[b]] = m
        kv = []
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, x, angles)
            kv.append((k, v))
            keys, values = [k], [v]
            if M:
                keys.insert(0, mid_kv[i, 0])
                values.insert(0, mid_kv[i, 1])
            if prefix is not None:
                keys.insert(0, prefix[i][0][None].expand(B, -1, -1, -1))
                values.insert(0, prefix[i][1][None].expand(B, -1, -1, -1))
            k, v = (torch.cat(keys, 2), torch.cat(values, 2)) if len(keys) > 1 else (k, v)
            # torch's fused CPU attention with an additive mask: ~1.4x the manual softmax(QK^T)V here
            attn = F.scaled_dot_product_attention(
                q, k.repeat_interleave(self.groups, 1), v.repeat_interleave(self.groups, 1), attn_mask=mask, scale=self.scale
            )
            x = self._finish_layer(layer, x, attn)
        return kv, x

    def decode(
        self,
        tokens: torch.Tensor,
        lens: torch.Tensor,
        prefix: Optional[list[tuple[torch.Tensor, torch.Tensor]]],
        prefix_len: int,
        cache: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """One step for A sequences: tokens [A], lens [A] = tokens already in each slot of `cache`
        (per layer K/V [slots, n_kv, S, d]; slots 0..A-1 are used). Writes the new KV at lens and
        returns the logits [A, vocab]."""
        A = tokens.shape[0]
        rows = torch.arange(A, device=tokens.device)
        angles = self._angles((lens + prefix_len)[:, None])
        x = F.embedding(tokens[:, None], self.embed)
        S = cache[0][0].shape[2]
        # Attend over every column of the slot (contiguous: a strided slice makes bf16 bmm copy);
        # columns past each sequence's length are masked.
        invalid = torch.arange(S, device=tokens.device)[None] > lens[:, None]  # [A, S]
        bias = torch.zeros(A, 1, 1, S, dtype=torch.float32, device=tokens.device).masked_fill(
            invalid[:, None, None], float("-inf")
        )
        g, d, nkv = self.groups, self.head_dim, self.n_kv
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, x, angles)
            K, V = cache[i]
            K[rows, :, lens] = k[:, :, 0]
            V[rows, :, lens] = v[:, :, 0]
            Ks, Vs = K[:A].view(A * nkv, S, d), V[:A].view(A * nkv, S, d)
            own = torch.bmm(q.reshape(A * nkv, g, d), Ks.transpose(1, 2)).view(A, nkv, g, S).float() * self.scale + bias
            if prefix is not None:
                Kp, Vp = prefix[i]
                qg = q.view(A, nkv, g, d)
                shared = torch.bmm(qg.permute(1, 0, 2, 3).reshape(nkv, A * g, d), Kp.transpose(1, 2))
                shared = shared.view(nkv, A, g, prefix_len).permute(1, 0, 2, 3).float() * self.scale
                probs = torch.softmax(torch.cat([shared, own], -1), -1).to(self.dtype)
                p_shared = probs[..., :prefix_len].permute(1, 0, 2, 3).reshape(nkv, A * g, prefix_len)
                out = torch.bmm(p_shared, Vp).view(nkv, A, g, d).permute(1, 0, 2, 3)
                p_own = probs[..., prefix_len:].reshape(A * nkv, g, S)
                out = out + torch.bmm(p_own, Vs).view(A, nkv, g, d)
            else:
                probs = torch.softmax(own, -1).to(self.dtype)
                out = torch.bmm(probs.view(A * nkv, g, S), Vs).view(A, nkv, g, d)
            x = self._finish_layer(layer, x, out.reshape(A, self.n_heads, 1, d))
        return self.logits(x[:, 0])


def kind_uses_window(cfg: Any) -> bool:
    if cfg.model_type == "mistral":
        return getattr(cfg, "sliding_window", None) is not None
    return False
