"""SASRec: self-attentive sequential recommendation (Kang & McAuley 2018, arXiv:1808.09781).

Written to be quantization-ready for the eager ``torch.ao.quantization`` flow:

* attention uses explicit Q/K/V/O ``nn.Linear`` layers (``nn.MultiheadAttention`` crashes in
  ``prepare_qat`` and its quantizable twin has no weight fake-quant);
* residual additions go through ``FloatFunctional`` so ``convert`` can turn them into
  ``quantized::add``;
* ``QuantStub``/``DeQuantStub`` mark where the quantized region starts (after the embeddings),
  where attention's float core sits, and where it ends (before scoring); they are identities
  until ``prepare_qat``;
* ``forward`` takes tensors only; tensor creation and device moves live in ``data/``.

Block (the paper's eq. 4-6, pre-LayerNorm residuals ``x + Dropout(g(LayerNorm(x)))``)::

    E   = item_emb(s) * sqrt(d) + pos_emb(p)                 # (B, T, d)
    x   = x + Dropout(Attn(LN(x)))                            # causal self-attention
    x   = x + Dropout(W2 Dropout(ReLU(W1 LN(x) + b1)) + b2)   # point-wise FFN
    h   = LN(x)                                               # final LayerNorm
    r_i = h_t . item_emb_i                                    # scores, tied item embedding

Padding (item 0) is handled so that a sequence's output does not depend on how much left padding
it carries: padding keys are masked out of attention (a padding query attends to itself only, so
no softmax row is empty), so padding rows never reach an item's row and need no zeroing; their
own outputs are never used (the loss skips them, scoring reads the last column, which is always
an item). Positions are right-aligned: the last column always has position ``max_len``, as in the
reference port, so a batch trimmed to its longest sequence gives the same outputs as a fully
padded one.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.nn.quantized import FloatFunctional
from torch.ao.quantization import DeQuantStub, QuantStub

from qat.config import SASRecConfig


class AttentionCore(nn.Module):
    """softmax(Q K^T / sqrt(d_head) + mask) V for every head, in float.

    Kept as its own module so a quantization mapping can leave it in float (softmax and the
    causal mask have no INT8 kernel).
    """

    def __init__(self, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                allowed: torch.Tensor) -> torch.Tensor:
        batch, length, width = q.shape
        head_dim = width // self.heads
        # (B, T, d) -> (B, nh, T, hs)
        q, k, v = (t.view(batch, length, self.heads, head_dim).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0)
        return out.transpose(1, 2).reshape(batch, length, width)  # (B, T, d)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with explicit projection layers.

    The projections are quantizable; the core (scores, mask, softmax, weighted sum) runs in float
    between ``dequant`` and ``quant_context``.
    """

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.dequant = DeQuantStub()
        self.core = AttentionCore(heads, dropout)
        self.quant_context = QuantStub()
        self.out_proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        q, k, v = (self.dequant(proj(x)) for proj in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(self.quant_context(self.core(q, k, v, allowed)))


class PointWiseFeedForward(nn.Module):
    """FFN(x) = W2 Dropout(ReLU(W1 x + b1)) + b2, applied to every position alike."""

    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, hidden)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.relu(self.fc1(x))))


class SASRecBlock(nn.Module):
    """One pre-LayerNorm transformer block: attention then FFN, each with a residual."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.attn = CausalSelfAttention(hidden, heads, dropout)
        self.attn_dropout = nn.Dropout(dropout)
        self.attn_residual = FloatFunctional()
        self.ffn_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.ffn = PointWiseFeedForward(hidden, dropout)
        self.ffn_dropout = nn.Dropout(dropout)
        self.ffn_residual = FloatFunctional()

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = self.attn_residual.add(x, self.attn_dropout(self.attn(self.attn_norm(x), allowed)))
        return self.ffn_residual.add(x, self.ffn_dropout(self.ffn(self.ffn_norm(x))))


class SASRec(nn.Module):
    """SASRec over ``config.num_items`` items; see the module docstring for the equations."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden
        self.item_emb = nn.Embedding(config.num_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(config.max_len + 1, d, padding_idx=0)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            SASRecBlock(d, config.heads, config.dropout) for _ in range(config.blocks))
        self.final_norm = nn.LayerNorm(d, eps=1e-8)
        self.quant_input = QuantStub()  # the quantized region starts after the embeddings
        self.dequant_output = DeQuantStub()  # and ends before scoring, which stays float32
        self.emb_scale = math.sqrt(d)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform for every matrix, as the reference port does; padding rows zero."""
        for name, param in self.named_parameters():
            if param.dim() > 1 and "norm" not in name:
                nn.init.xavier_uniform_(param)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
            self.pos_emb.weight[0].zero_()

    def item_table(self) -> torch.Tensor:
        """The (num_items + 1, d) item embedding used for scoring (tied with the input table).

        Float model: the weight. QAT model: the fake-quantized weight, exactly what the lookup
        uses. Converted model: the dequantized INT8 table.
        """
        emb = self.item_emb
        if hasattr(emb, "weight_fake_quant"):
            return emb.weight_fake_quant(emb.weight)
        if callable(emb.weight):  # torch.ao.nn.quantized.Embedding stores a packed table
            return emb.weight().dequantize()
        return emb.weight

    def forward(self, item_seq: torch.Tensor) -> torch.Tensor:
        """Hidden state of every position.

        Args:
            item_seq: (B, T) item ids, left-padded with 0, T <= max_len.
        Returns:
            (B, T, d) hidden states; row t summarises the items up to and including t.
        """
        if item_seq.dim() != 2:
            raise ValueError(f"item_seq must be (batch, length), got shape {tuple(item_seq.shape)}")
        batch, length = item_seq.shape
        if length > self.config.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {self.config.max_len}; "
                             "keep the last max_len items (data.batching does)")
        keep = item_seq != 0  # (B, T)
        positions = torch.arange(self.config.max_len - length + 1, self.config.max_len + 1,
                                 device=item_seq.device).expand(batch, length) * keep
        x = self.item_emb(item_seq) * self.emb_scale + self.pos_emb(positions)  # (B, T, d)
        x = self.quant_input(self.emb_dropout(x))
        allowed = attention_mask(keep)
        for block in self.blocks:
            x = block(x, allowed)
        return self.dequant_output(self.final_norm(x))

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of every item (column 0 is the padding item) for each hidden state (..., d)."""
        return hidden @ self.item_table().t()

    def last_hidden(self, item_seq: torch.Tensor) -> torch.Tensor:
        """(B, d) hidden state at the last position: the user representation for the next item."""
        return self(item_seq)[:, -1, :]

    def score_last(self, item_seq: torch.Tensor) -> torch.Tensor:
        """(B, num_items + 1) scores for the next item after each sequence."""
        return self.score(self.last_hidden(item_seq))


def attention_mask(keep: torch.Tensor) -> torch.Tensor:
    """Boolean (B, 1, T, T) mask: query i may attend key j iff j <= i and j is an item.

    A padding query may attend itself, so every softmax row has at least one entry.
    """
    length = keep.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=keep.device).tril()
    eye = torch.eye(length, dtype=torch.bool, device=keep.device)
    return (causal & (keep.unsqueeze(1) | eye)).unsqueeze(1)
