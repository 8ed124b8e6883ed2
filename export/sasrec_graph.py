"""SASRec as an ONNX graph, written once for the FP32 and the converted INT8 model.

    model = build_sasrec_onnx(int8_model, top_k=10)    # or an FP32 SASRec
    save_onnx(model, "runs/lsq/model_int8.onnx")

Graph (``qat.model.SASRec.score_last``)::

    item_seq (B, T) int64, 0 = padding, T <= max_len (dynamic B and T)
    keep      = item_seq != 0
    positions = Range(max_len - T + 1, max_len + 1) * keep      # right-aligned, padding -> 0
    x         = item_emb[item_seq] * sqrt(d) + pos_emb[positions]
    allowed   = (j <= i) & (keep[j] | i == j)                    # (B, 1, T, T)
    x         = Quantize(x)                                      # INT8 only
    per block:  x = x + out_proj(Quantize(Attn(DeQuantize(q, k, v of LN(x)))))
                x = x + fc2(ReLU(fc1(LN(x))))
    h         = LN(x[:, -1])                                     # only the last column is scored
    scores    = h . item_table^T                                 # (B, num_items + 1) float32

Serving graph (``last_position_only``, the default): only the last column is scored, so the
last block computes its queries, attention row, output projection, residuals and FFN for the
last position only; its keys and values still come from every position. All per-position ops
(Linear, LayerNorm, Add, quantization) give the last column exactly as the full-sequence graph
does; the attention row is the same dot products (``(B, nh, 1, hs) x (B, nh, hs, T)``) and may
differ from the full matrix product in the last float bit. The earlier blocks are needed in
full (the last block attends to all their outputs).

``Attn`` is softmax(Q K^T / sqrt(d_head), masked with -inf) V per head, in float, as torch's
``scaled_dot_product_attention`` with a boolean mask. The final LayerNorm is applied to the last
column only (it is per position, so this equals torch's full-sequence LN followed by
``[:, -1]``). The per-layer arithmetic comes from a layer backend
(``export.layer_emitter.LayerEmitter``): ``export.float_layers`` for FP32, for INT8 the emitter
the flags select from the registry ``export.int8_emitters.EMITTERS`` (``"torch_exact"``: ONNX
local functions from ``export.torch_kernels`` that round exactly like torch; ``"fused"``: the
same arithmetic as custom ops of ``export.native_ops``; ``"plain"``: standard ONNX ops). The
backend's ``graph_passes`` then rewrite the built model (the fused backend's pass folds each
LayerNorm into the op that wrote its input, ``export.fusion``).

Outputs: ``scores`` (by the INT8 emitter's scoring path, ``SCORING_PATHS``); with
``hidden_output`` also ``hidden``, the final LayerNorm output (uint8 for INT8), for parity checks.

Top-k graph (``top_k=k``): the same model, then ``LayerEmitter.score_top_k`` (``export.top_k``
for standard ops, ``ScoreTopK`` in the fused backend): extra inputs ``exclude`` ((B, E) or one
shared (1, E) row of ids never to recommend; default none) and ``k`` (default ``top_k``), both
graph inputs backed by initializers; the padding item, ``item_seq``'s ids and ``exclude``'s are
masked; outputs ``top_k_scores`` and ``top_k_items`` (B, k), best first, ties by lower id, id 0
and -inf past the admissible items; no ``scores``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from torch import nn
from torch.ao.nn import quantized as nnq

from export.float_layers import FloatLayers
from export.graph_builder import FLOAT, INT64, GraphBuilder
from export.int8_emitters import backend_name, get_emitter
from export.layer_emitter import LayerEmitter
from qat.model import SASRec

Layers = LayerEmitter[Any]
INPUT = "item_seq"
EXCLUDE = "exclude"
K_INPUT = "k"
SCORES = "scores"
TOP_K_ITEMS = "top_k_items"
TOP_K_SCORES = "top_k_scores"
HIDDEN = "hidden"
SCORING_PATHS = ("int8", "float", "fused")


def model_kind(model: SASRec) -> str:
    """``"int8"`` for a converted model, ``"fp32"`` for a float one.

    Raises:
        ValueError: for a QAT (fake-quant) model that has not been converted.
    """
    emb = model.item_emb
    if isinstance(emb, nnq.Embedding):
        return "int8"
    if hasattr(emb, "weight_fake_quant") or hasattr(model.quant_input, "activation_post_process"):
        raise ValueError("this is a QAT (fake-quant) model: convert it to INT8 first "
                         "(qat.finetune.to_int8 or load_int8_model)")
    if type(emb) is nn.Embedding:
        return "fp32"
    raise ValueError(f"cannot export a SASRec whose item_emb is {type(emb).__name__}")


def build_sasrec_onnx(model: SASRec, *, top_k: int | None = None, hidden_output: bool = False,
                      torch_exact: bool = True, fused: bool = False,
                      last_position_only: bool = True, scoring: str | None = None,
                      metadata: dict[str, Any] | None = None) -> onnx.ModelProto:
    """The ONNX graph of ``model.score_last`` (FP32 or converted INT8 SASRec).

    Args:
        model: an FP32 ``SASRec`` or its converted INT8 twin (``qat.finetune.to_int8``).
        top_k: write the top-k serving graph instead (module docstring, "Top-k graph"): inputs
            ``item_seq``, ``exclude`` and ``k`` (default ``top_k``), outputs ``top_k_items``
            and ``top_k_scores``; no ``scores``.
        scoring: INT8 only: how the item table is scored (``SCORING_PATHS``;
            ``export.int8_emitters.common``): ``"int8"``, exact int32 products; ``"float"``, a
            float32 Gemm against the dequantized table (built by onnxruntime at session
            creation); ``"fused"`` (fused backend only), the int8 path's scores in one custom
            op. Default: the backend's (``"fused"`` for the fused backend, else ``"int8"``).
        hidden_output: also output the final hidden state (diagnostics, parity).
        torch_exact: INT8 only: round exactly like torch's kernels (backend ``"torch_exact"``:
            the ONNX functions of ``export.torch_kernels``); False writes plain
            ``QuantizeLinear``/``LayerNormalization``/``DequantizeLinear`` ops (backend
            ``"plain"``: faster in onnxruntime, each within one step of torch, but a flipped
            step propagates).
        fused: INT8 only, with ``torch_exact``: each requantizing op is one custom-op node
            (backend ``"fused"``, ``export.native_ops``: the same uint8 results, much faster;
            the file then runs only in a session with the library registered, as
            ``make_session`` does).
        last_position_only: the serving graph: the last block computes only what the last
            position needs (see the module docstring). False computes every position, as
            ``SASRec.forward`` does.
        metadata: extra ``metadata_props`` (method, bits, ...); values are stringified.

    Raises:
        ValueError: an unconverted QAT model, unsupported quantization, a bad ``top_k`` or
            ``scoring``, or ``fused`` without ``torch_exact`` for an INT8 model.
    """
    config = model.config
    if top_k is not None and not 1 <= top_k <= config.num_items:
        raise ValueError(f"top_k must be in [1, {config.num_items}] (the number of items), "
                         f"got {top_k}")
    if scoring is not None and scoring not in SCORING_PATHS:
        raise ValueError(f"scoring must be one of {', '.join(SCORING_PATHS)}, got {scoring!r}")
    kind = model_kind(model)
    g = GraphBuilder(f"sasrec_{kind}")
    layers: Layers = (get_emitter(backend_name(torch_exact=torch_exact, fused=fused))(
        g, scoring=scoring) if kind == "int8" else FloatLayers(g))
    item_seq = g.add_input(INPUT, INT64, ["batch", "length"])

    positions, allowed = _positions_and_mask(g, item_seq, config.max_len)
    x = layers.embed_quantized(item_seq, positions, model.item_emb, model.pos_emb,
                               model.emb_scale, model.quant_input, "quant_input")
    head_dim = config.hidden // config.heads
    for i, block in enumerate(model.blocks):
        if last_position_only and i == len(model.blocks) - 1:
            x = _last_block(g, layers, block, x, allowed, config.heads, head_dim, f"blocks.{i}")
        else:
            x = _block(g, layers, block, x, allowed, config.heads, head_dim, f"blocks.{i}")
    if not last_position_only or not len(model.blocks):
        x = layers.last_position(x, "last_position")
    hidden = layers.layer_norm(x, model.final_norm, "final_norm")
    add_serving_outputs(g, layers, hidden, model.item_emb, item_seq, config.num_items, top_k)
    if hidden_output:
        g.add_output(_rename(g, layers.hidden_value(hidden), HIDDEN), layers.hidden_type,
                     ["batch", config.hidden])
    # INT8 adds sasrec_qat.max_abs_weight_int (> 64 can saturate u8 x s8 kernels on AVX2
    # without VNNI), sasrec_qat.torch_exact and sasrec_qat.fused (Int8Emitter.metadata)
    props = {"sasrec_qat.kind": kind, "sasrec_qat.num_items": config.num_items,
             "sasrec_qat.max_len": config.max_len, "sasrec_qat.hidden": config.hidden,
             "sasrec_qat.blocks": config.blocks, "sasrec_qat.heads": config.heads,
             "sasrec_qat.last_position_only": int(last_position_only),
             "sasrec_qat.serving": "scores" if top_k is None else "top_k",
             **({} if top_k is None else {"sasrec_qat.top_k": top_k}), **(metadata or {}),
             **layers.metadata()}
    onnx_model = g.build(metadata={k: str(v) for k, v in props.items()},
                         doc=f"SASRec ({kind}) next-item scores; see export/sasrec_graph.py")
    for graph_pass in layers.graph_passes:
        graph_pass(onnx_model)
    return onnx_model


def add_serving_outputs(g: GraphBuilder, layers: Layers, hidden: Any, item_emb: nn.Module,
                        item_seq: str | None, num_items: int, top_k: int | None) -> None:
    """The graph's serving tail after the final hidden state: output ``scores``
    (B, num_items + 1) when ``top_k`` is None, else inputs ``exclude`` (default: none) and ``k``
    (default ``top_k``) and outputs ``top_k_scores`` and ``top_k_items`` (B, k)
    (``export.scoring_probe`` builds the same tail on a hidden-state input)."""
    if top_k is None:
        g.add_output(layers.score(hidden, item_emb, SCORES), FLOAT, ["batch", num_items + 1])
        return
    exclude = g.initializer(np.zeros((1, 1), np.int64), EXCLUDE)  # default: nothing more
    g.add_input(exclude, INT64, ["exclude_rows", "exclude_length"])
    k = g.initializer(np.array([top_k], np.int64), K_INPUT)
    g.add_input(k, INT64, [1])
    values, items = layers.score_top_k(hidden, item_emb, item_seq, exclude, k, "top_k")
    g.add_output(_rename(g, values, TOP_K_SCORES), FLOAT, ["batch", "k"])
    g.add_output(_rename(g, items, TOP_K_ITEMS), INT64, ["batch", "k"])


def _rename(g: GraphBuilder, value: str, name: str) -> str:
    """An Identity so a graph output carries a stable public name."""
    return g.node("Identity", [value], name=name)


def _positions_and_mask(g: GraphBuilder, item_seq: str, max_len: int) -> tuple[str, str]:
    """Right-aligned ``positions`` (B, T) int64 and the attention mask ``allowed`` (B, 1, T, T).

    As ``qat.model``: position ``max_len`` for the last column, 0 for padding; query i may
    attend key j iff j <= i and (j is an item or j == i).
    """
    keep = g.node("Not", [g.node("Equal", [item_seq, g.scalar(0, np.int64, "zero")],
                                 name="is_padding")], name="keep")
    length = g.node("Gather", [g.node("Shape", [item_seq], name="seq_shape"),
                               g.scalar(1, np.int64, "one")], name="length", axis=0)
    end = g.scalar(max_len + 1, np.int64, "max_len_plus_one")
    one = g.scalar(1, np.int64, "one")
    start = g.node("Sub", [end, length], name="first_position")
    positions = g.node("Mul", [g.node("Range", [start, end, one], name="position_range"),
                               g.node("Cast", [keep], name="keep_int", to=INT64)],
                       name="positions")
    steps = g.node("Range", [g.scalar(0, np.int64, "zero"), length, one], name="steps")
    query = g.node("Unsqueeze", [steps, g.ints([1], "axes_1")], name="query_index")  # (T, 1)
    key = g.node("Unsqueeze", [steps, g.ints([0], "axes_0")], name="key_index")  # (1, T)
    causal = g.node("LessOrEqual", [key, query], name="causal")
    diagonal = g.node("Equal", [key, query], name="diagonal")
    key_ok = g.node("Or", [g.node("Unsqueeze", [keep, g.ints([1], "axes_1")], name="keep_keys"),
                           diagonal], name="key_allowed")  # (B, T, T)
    allowed = g.node("Unsqueeze", [g.node("And", [causal, key_ok], name="allowed_bt"),
                                   g.ints([1], "axes_1")], name="allowed")  # (B, 1, T, T)
    return positions, allowed


def _block(g: GraphBuilder, layers: Layers, block: nn.Module, x: Any, allowed: str, heads: int,
           head_dim: int, hint: str) -> Any:
    """One pre-LayerNorm block (``qat.model.SASRecBlock``): attention then FFN, residuals."""
    attn = block.attn
    h = layers.layer_norm(x, block.attn_norm, f"{hint}.attn_norm")
    q, k, v = layers.linears_dequantized(h, [attn.q_proj, attn.k_proj, attn.v_proj],
                                         [f"{hint}.attn.{n}_proj" for n in "qkv"])
    context = _attention_core(g, q, k, v, allowed, heads, head_dim, f"{hint}.attn.core")
    context = layers.quantize(context, attn.quant_context, f"{hint}.attn.quant_context")
    x = layers.add_linear(x, context, attn.out_proj, block.attn_residual,
                          f"{hint}.attn.out_proj", f"{hint}.attn_residual")
    return _ffn_half(layers, block, x, hint)


def _ffn_half(layers: Layers, block: nn.Module, x: Any, hint: str) -> Any:
    """``x + fc2(ReLU(fc1(LN(x))))``, per position, for (B, T, d) or (B, d)."""
    h = layers.layer_norm(x, block.ffn_norm, f"{hint}.ffn_norm")
    h = layers.linear(h, block.ffn.fc1, f"{hint}.ffn.fc1", relu=True)
    return layers.add_linear(x, h, block.ffn.fc2, block.ffn_residual, f"{hint}.ffn.fc2",
                             f"{hint}.ffn_residual")


def _last_block(g: GraphBuilder, layers: Layers, block: nn.Module, x: Any, allowed: str,
                heads: int, head_dim: int, hint: str) -> Any:
    """``_block`` for the last position only: (B, T, d) -> (B, d).

    Keys and values come from every position; the query, the attention row, the output
    projection, both residuals and the FFN from the last position alone.
    """
    attn = block.attn
    h = layers.layer_norm(x, block.attn_norm, f"{hint}.attn_norm")
    k, v = layers.linears_dequantized(h, [attn.k_proj, attn.v_proj],
                                      [f"{hint}.attn.{n}_proj" for n in "kv"])
    h_last = layers.last_position(h, f"{hint}.attn_norm.last")
    q, = layers.linears_dequantized(h_last, [attn.q_proj], [f"{hint}.attn.q_proj"])
    to_end = g.ints([np.iinfo(np.int64).max], "to_end")
    last_row = g.node("Slice", [allowed, g.ints([-1], "minus_one"), to_end, g.ints([2], "axes_2")],
                      name=f"{hint}.attn.allowed_last")  # (B, 1, 1, T)
    context = _attention_core(g, q, k, v, last_row, heads, head_dim, f"{hint}.attn.core",
                              single_query=True)
    context = layers.quantize(context, attn.quant_context, f"{hint}.attn.quant_context")
    x = layers.add_linear(layers.last_position(x, f"{hint}.last"), context, attn.out_proj,
                          block.attn_residual, f"{hint}.attn.out_proj", f"{hint}.attn_residual")
    return _ffn_half(layers, block, x, hint)


def _attention_core(g: GraphBuilder, q: str, k: str, v: str, allowed: str, heads: int,
                    head_dim: int, hint: str, *, single_query: bool = False) -> str:
    """softmax(Q K^T / sqrt(d_head) where allowed, else -inf) V for every head, in float.

    (B, T, d) x3 -> (B, T, d); heads split as ``view(B, T, nh, hs).transpose(1, 2)``.
    ``single_query``: ``q`` is (B, d), one query per row (the last position), ``allowed``
    (B, 1, 1, T), and the result is (B, d).
    """
    if heads == 1:  # K^T as a swap of the last two axes after the Reshape: onnxruntime folds
        # that Transpose into the product (FusedMatMul transB), a (0, 2, 3, 1) one it copies
        k = g.node("Transpose", [_split_heads(g, k, heads, head_dim, f"{hint}.k")],
                   name=f"{hint}.k_t", perm=[0, 1, 3, 2])  # (B, 1, hs, T)
    else:  # one copy either way: split and transpose in one
        k = g.node("Transpose", [g.node("Reshape", [k, g.ints([0, 0, heads, head_dim],
                                                              "head_split")],
                                        name=f"{hint}.k_heads")],
                   name=f"{hint}.k_t", perm=[0, 2, 3, 1])  # (B, nh, hs, T)
    if single_query:  # (B, d) -> (B, nh, 1, hs)
        q = g.node("Reshape", [q, g.ints([0, heads, 1, head_dim], "head_split_one")],
                   name=f"{hint}.q_heads")
    else:
        q = _split_heads(g, q, heads, head_dim, f"{hint}.q")  # (B, nh, T, hs)
    v = _split_heads(g, v, heads, head_dim, f"{hint}.v")  # (B, nh, T, hs)
    logits = g.node("Mul", [g.node("MatMul", [q, k], name=f"{hint}.qk"),
                            g.scalar(np.float32(1.0 / math.sqrt(head_dim)), np.float32,
                                     "attn_scale")], name=f"{hint}.logits")  # (B, nh, T, T)
    masked = g.node("Where", [allowed, logits, g.scalar(-np.inf, np.float32, "minus_inf")],
                    name=f"{hint}.masked")
    weights = g.node("Softmax", [masked], name=f"{hint}.softmax", axis=-1)
    context = g.node("MatMul", [weights, v], name=f"{hint}.context")  # (B, nh, T, hs)
    if single_query:  # (B, nh, 1, hs) -> (B, d)
        return g.node("Reshape", [context, g.ints([0, heads * head_dim], "head_merge_one")],
                      name=hint)
    if heads > 1:
        context = g.node("Transpose", [context], name=f"{hint}.context_t", perm=[0, 2, 1, 3])
    return g.node("Reshape", [context, g.ints([0, -1, heads * head_dim], "head_merge")],
                  name=hint)  # (B, T, d)


def _split_heads(g: GraphBuilder, x: str, heads: int, head_dim: int, hint: str) -> str:
    """(B, T, d) -> (B, nh, T, hs), as ``view(B, T, nh, hs).transpose(1, 2)``; with one head the
    transpose moves nothing, so it is a Reshape alone (no copy)."""
    if heads == 1:
        return g.node("Reshape", [x, g.ints([0, 1, -1, head_dim], "one_head")],
                      name=f"{hint}_heads")
    return g.node("Transpose", [g.node("Reshape", [x, g.ints([0, 0, heads, head_dim],
                                                             "head_split")],
                                       name=f"{hint}_heads")],
                  name=f"{hint}_t", perm=[0, 2, 1, 3])
