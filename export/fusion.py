"""Graph passes over a finished ONNX model of the fused INT8 backend.

``fold_layer_norms``: SASRec is pre-LayerNorm, so every residual sum (and the quantized
embedding) is read twice: by the next residual add and by a LayerNorm. The fused kernels can
normalise each row right after writing it, while it is still in cache, and return both
tensors. This pass rewrites such producer + LayerNorm pairs, all nodes of the custom domain
``export.native_ops.DOMAIN``::

    u = RequantizeAdd(acc, bias_acc, multiplier, residual) {s_a, ..., z}
    y = LayerNorm(u, gamma, beta) {s_x, z_x, eps, inv_s, z}
        ->  u, y = RequantizeAddNorm(acc, bias_acc, multiplier, residual, gamma, beta)
                   {s_a, ..., z, norm_s_x, norm_z_x, norm_eps, norm_inv_s, norm_z}

and the same for ``EmbedQuantize`` -> ``EmbedQuantizeNorm`` (export/native/ort_ops.cc lists the
ops). The rule, matched on op types (domain included) and consumers:

* the LayerNorm's input is the first (only) output of a ``RequantizeAdd`` or ``EmbedQuantize``
  node; that tensor may have other consumers (the next residual add reads it too): it stays the
  producer's first output;
* a producer folds one LayerNorm: of two LayerNorms of the same tensor, the first in node order
  is folded and the other left as it is;
* ``gamma`` and ``beta`` must be available where the producer runs (initializers or graph
  inputs, as the emitter writes them), so the folded node stays in topological order;
* the LayerNorm node is removed; its output keeps its name as the producer's second output, so
  its consumers are untouched. Its attributes are appended to the producer's, renamed
  ``norm_<name>``, in the order of the kernel's signature (``NORM_ATTRIBUTES``).

The folded op computes the same uint8 tensors (the kernel runs the LayerNorm code on each row
it has just written), so the graph's outputs are bit-identical before and after the pass
(tests/test_export_fused.py).
"""
from __future__ import annotations

import onnx

from export.native_ops import DOMAIN

LAYER_NORM = "LayerNorm"
NORM_PRODUCERS = ("RequantizeAdd", "EmbedQuantize")  # each has a "<op>Norm" twin
NORM_SUFFIX = "Norm"
NORM_ATTRIBUTES = ("s_x", "z_x", "eps", "inv_s", "z")  # LayerNorm's, as ort_ops.cc lists them
NORM_PREFIX = "norm_"


def _graph(model: onnx.ModelProto | onnx.GraphProto) -> onnx.GraphProto:
    return model.graph if isinstance(model, onnx.ModelProto) else model


def fold_layer_norms(model: onnx.ModelProto | onnx.GraphProto) -> int:
    """Fold each fused ``LayerNorm`` into the ``RequantizeAdd``/``EmbedQuantize`` that wrote its
    input (the module docstring states the rule). Edits ``model`` in place.

    Args:
        model: a model (or its graph) of the fused INT8 backend; other nodes are left alone,
            so a graph without fused ops comes back unchanged.

    Returns:
        The number of LayerNorm nodes folded.
    """
    graph = _graph(model)
    available = {t.name for t in graph.initializer} | {i.name for i in graph.input}
    producers: dict[str, int] = {}  # first output -> index of a foldable producer node
    folds: list[tuple[int, int]] = []  # (producer index, LayerNorm index)
    for index, node in enumerate(graph.node):
        if node.domain != DOMAIN:
            continue
        if node.op_type in NORM_PRODUCERS and len(node.output) == 1:
            producers[node.output[0]] = index
        elif (node.op_type == LAYER_NORM and len(node.input) == 3
              and node.input[0] in producers and set(node.input[1:]) <= available
              and sorted(a.name for a in node.attribute) == sorted(NORM_ATTRIBUTES)):
            folds.append((producers.pop(node.input[0]), index))
    for producer_index, norm_index in folds:
        producer, norm = graph.node[producer_index], graph.node[norm_index]
        attributes = {a.name: a for a in norm.attribute}
        producer.op_type += NORM_SUFFIX
        producer.input.extend(norm.input[1:])  # gamma, beta
        producer.output.append(norm.output[0])
        for name in NORM_ATTRIBUTES:
            attribute = producer.attribute.add()
            attribute.CopyFrom(attributes[name])
            attribute.name = NORM_PREFIX + name
    for _, norm_index in sorted(folds, key=lambda fold: fold[1], reverse=True):
        del graph.node[norm_index]
    return len(folds)
