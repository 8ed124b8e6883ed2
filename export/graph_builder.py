"""A small wrapper around ``onnx.helper``: unique names, constants, nodes, local functions.

Example::

    g = GraphBuilder("tiny")
    x = g.add_input("x", FLOAT, ["batch", 4])
    w = g.initializer(np.ones((4, 2), np.float32), "w")
    g.add_output(g.node("MatMul", [x, w], name="y"), FLOAT, ["batch", 2])
    model = g.build()

Nodes get no names (outputs carry descriptive names; node names would only add bytes to a file
whose point is to be small). A builder made with ``function=True`` writes the body of an ONNX
local function: its constants become ``Constant`` nodes (functions hold no initializers).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 21  # LayerNormalization needs 17; 21 is the newest onnxruntime 1.32 runs everywhere
IR_VERSION = 10  # the IR version that goes with opset 21 (onnx.helper.VERSION_TABLE)
PRODUCER = "sasrec-qat"

FLOAT = TensorProto.FLOAT
DOUBLE = TensorProto.DOUBLE
INT64 = TensorProto.INT64
INT32 = TensorProto.INT32
UINT8 = TensorProto.UINT8
INT8 = TensorProto.INT8


class GraphBuilder:
    """Collects nodes and constants with unique names; builds a model or a function.

    Args:
        name: the graph's (or function's) name.
        function: build a function body (constants as ``Constant`` nodes).
    """

    def __init__(self, name: str, *, function: bool = False) -> None:
        self.name = name
        self.function = function
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.functions: dict[tuple[str, str], onnx.FunctionProto] = {}
        self._used: set[str] = set()
        self._scalars: dict[tuple[str, bytes], str] = {}

    def unique(self, hint: str) -> str:
        """``hint`` if unused, else ``hint_1``, ``hint_2``, ... (and mark it used)."""
        name, n = hint, 0
        while name in self._used:
            n += 1
            name = f"{hint}_{n}"
        self._used.add(name)
        return name

    def add_input(self, name: str, elem_type: int = FLOAT,
                  shape: Sequence[int | str] | None = None) -> str:
        """Declare a graph input; dims given as strings are symbolic (dynamic)."""
        self._used.add(name)
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def add_output(self, name: str, elem_type: int = FLOAT,
                   shape: Sequence[int | str] | None = None) -> str:
        """Declare an existing value as a graph output."""
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def initializer(self, array: np.ndarray, hint: str) -> str:
        """Store ``array`` (dtype kept) as an initializer (a ``Constant`` in a function)."""
        name = self.unique(hint)
        tensor = numpy_helper.from_array(np.asarray(array, order="C"), name)
        if self.function:
            self.nodes.append(helper.make_node("Constant", [], [name], value=tensor))
        else:
            self.initializers.append(tensor)
        return name

    def scalar(self, value: Any, dtype: type | np.dtype, hint: str = "const") -> str:
        """A 0-d constant, shared between all users of the same value and dtype."""
        array = np.array(value, dtype=dtype)
        key = (array.dtype.str, array.tobytes())
        if key not in self._scalars:
            self._scalars[key] = self.initializer(array, hint)
        return self._scalars[key]

    def ints(self, values: Sequence[int], hint: str = "shape") -> str:
        """A 1-d int64 constant (shapes, axes, perms), shared between equal values."""
        array = np.asarray(values, dtype=np.int64)
        key = (array.dtype.str + str(array.shape), array.tobytes())
        if key not in self._scalars:
            self._scalars[key] = self.initializer(array, hint)
        return self._scalars[key]

    def node(self, op_type: str, inputs: Sequence[str], *, name: str | None = None,
             num_outputs: int = 1, domain: str = "", **attrs: Any) -> str | list[str]:
        """Append a node; returns its output name (a list when ``num_outputs > 1``).

        ``name`` is the hint for the output names; ``""`` in ``inputs`` marks an omitted
        optional input.
        """
        base = name or op_type.lower()
        outputs = [self.unique(base if num_outputs == 1 else f"{base}_{i}")
                   for i in range(num_outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, domain=domain,
                                           **attrs))
        return outputs[0] if num_outputs == 1 else outputs

    def call(self, function: onnx.FunctionProto, inputs: Sequence[str], *, name: str) -> str:
        """Call a local function (registering it with the model once); returns its output."""
        self.functions.setdefault((function.domain, function.name), function)
        return self.node(function.name, inputs, name=name, domain=function.domain)

    def build_function(self, domain: str, doc: str = "") -> onnx.FunctionProto:
        """This builder's nodes as a function ``domain.name`` (inputs/outputs by name)."""
        assert self.function, "build_function needs GraphBuilder(..., function=True)"
        return helper.make_function(
            domain, self.name, [i.name for i in self.inputs], [o.name for o in self.outputs],
            self.nodes, [helper.make_opsetid("", OPSET)], doc_string=doc)

    def build(self, *, metadata: dict[str, str] | None = None, doc: str = "") -> onnx.ModelProto:
        """The model (opset ``OPSET`` plus the domains of its functions and custom ops)."""
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs,
                                  self.initializers, doc_string=doc)
        domains = sorted({domain for domain, _ in self.functions}
                         | {n.domain for n in self.nodes if n.domain})
        opsets = [helper.make_opsetid("", OPSET)] + [helper.make_opsetid(d, 1) for d in domains]
        model = helper.make_model(graph, opset_imports=opsets, producer_name=PRODUCER,
                                  ir_version=IR_VERSION, functions=list(self.functions.values()))
        helper.set_model_props(model, metadata or {})
        return model
