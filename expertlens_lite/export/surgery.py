"""ONNX graph surgery: expose pooled MLP neurons as outputs.

The exported feature-extraction graph computes every layer's neuron activations
``[batch, seq, d_mlp]`` internally. We add one graph input, ``pool_mask``
``[batch, seq]`` (1 where a token takes part in pooling), and per layer two outputs
pooled over tokens *inside the graph*, so only ``[batch, d_mlp]`` leaves ONNX
Runtime:

- ``blocks.{i}.mlp.hook_post.max``: max over tokens where ``pool_mask`` is 1
  (other positions are replaced by -inf first, so padding never wins the max);
- ``blocks.{i}.mlp.hook_post.mean``: mean over the same tokens.

ONNX Runtime runs every node whichever outputs a caller asks for, so a run's
session keeps only the outputs it reads (:func:`keep_outputs`). ``sentence_embedding``
(mean of the last hidden state over the same tokens) feeds the sentence-embedding
baseline; ``last_hidden_state`` itself is no longer an output. ``pool_mask`` is
separate from ``attention_mask`` so the runtime can leave out special tokens (BOS,
CLS, SEP) without changing what the model sees.
A causal graph exported with past keys and values also takes the neurons and hidden
state of the past tokens and returns what a later run reads
(:func:`add_pooled_outputs`, :mod:`expertlens_lite.heads`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ModelError

POOL_MASK = "pool_mask"
SENTENCE_EMBEDDING = "sentence_embedding"
POOLINGS = ("max", "mean")
PAST_INPUT = "past_key_values."
PRESENT_OUTPUT = "present."
PAST_NEURONS = "past_neurons."
PAST_HIDDEN = "past_hidden"
TOKEN_NEURONS = "token_neurons."
TOKEN_HIDDEN = "token_hidden"


def neuron_output(layer: int, pooling: str) -> str:
    """Canonical output name of layer ``layer``'s pooled neurons."""
    return f"blocks.{layer}.mlp.hook_post.{pooling}"


def response_outputs(n_layers: int, pooling: str) -> list[str]:
    """The outputs a run reads: every layer's pooled neurons in layer order, then the
    sentence embedding."""
    return [neuron_output(i, pooling) for i in range(n_layers)] + [SENTENCE_EMBEDDING]


def past_neurons(layer: int) -> str:
    """Input name of the neurons of layer ``layer`` at the past tokens."""
    return f"{PAST_NEURONS}{layer}"


def token_neurons(layer: int) -> str:
    """Output name of the neurons of layer ``layer`` at every token run."""
    return f"{TOKEN_NEURONS}{layer}"


def scope_input(graph: onnx.GraphProto, scope: str) -> str:
    """The one activation tensor that enters the nodes named under ``scope``.

    That is the input of the module the scope belongs to: for a down-projection,
    the neuron layer, whether the module is a MatMul (Linear) or a Reshape+Gemm
    (GPT-2's Conv1D). Initializers and constants are not activations.
    """
    nodes = [node for node in graph.node if node.name.startswith(scope)]
    if not nodes:
        raise ModelError(f"the exported graph has no nodes under {scope!r}; the architecture entry does not match")
    inside = {out for node in nodes for out in node.output}
    constants = _constant_tensors(graph)
    entering = list(
        dict.fromkeys(name for node in nodes for name in node.input if name and name not in inside and name not in constants)
    )
    if len(entering) != 1:
        raise ModelError(f"expected one activation entering {scope!r}, found {entering}")
    return entering[0]


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove the initializers no node reads any more (after a rewrite replaced them);
    ONNX Runtime would otherwise warn about each one at every session start."""
    used = set().union(*(_node_inputs(node) for node in graph.node))
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)


def _constant_tensors(graph: onnx.GraphProto) -> set[str]:
    """Initializers and every tensor computed from them alone (Constant, Identity of a
    shared weight, ...). Nodes are topologically sorted, so one pass suffices."""
    constants = {init.name for init in graph.initializer}
    for node in graph.node:
        if all(name in constants for name in node.input if name):
            constants.update(node.output)
    return constants


def _opset(model: onnx.ModelProto) -> int:
    return next(op.version for op in model.opset_import if op.domain in ("", "ai.onnx"))


class _Builder:
    """Appends nodes with unique names; hides the opset differences of Reduce* ops."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph = model.graph
        self.opset = _opset(model)

    def node(self, op: str, inputs: list[str], name: str, output: str | None = None, **attrs: object) -> str:
        """Append a node; its output is named ``output`` (a graph output's name), else after the node."""
        output = output or f"/elens/{name}_output"
        self.graph.node.append(helper.make_node(op, inputs, [output], name=f"/elens/{name}", **attrs))
        return output

    def constant(self, name: str, value: np.ndarray | list[int]) -> str:
        """An initializer; a list is taken as int64 (the type of axes, starts and shapes)."""
        array = np.array(value, dtype=np.int64) if isinstance(value, list) else value
        tensor = numpy_helper.from_array(array, name=f"/elens/{name}")
        self.graph.initializer.append(tensor)
        return tensor.name

    def reduce(self, op: str, data: str, axis: int, name: str, keepdims: int) -> str:
        # ReduceSum takes axes as an input from opset 13, ReduceMax from opset 18.
        axes_as_input = self.opset >= (13 if op == "ReduceSum" else 18)
        if axes_as_input:
            axes = self.constant(f"{name}_axes", [axis])
            return self.node(op, [data, axes], name, keepdims=keepdims)
        return self.node(op, [data], name, axes=[axis], keepdims=keepdims)


def add_pooled_outputs(model: onnx.ModelProto, scopes: list[str], units: list[int], hidden_output: str) -> None:
    """Rewrite ``model`` in place: add ``pool_mask`` and the pooled outputs.

    Args:
        model: a feature-extraction export with ``attention_mask`` and ``hidden_output``,
            with or without ``past_key_values`` inputs.
        scopes: per layer, the node-name scope of the MLP down-projection.
        units: per layer, the number of neurons (``d_mlp``).
        hidden_output: name of the last-hidden-state output, replaced by
            ``sentence_embedding``.

    A graph with past keys and values runs the tokens after ``past`` tokens that an
    earlier run computed (:mod:`expertlens_lite.heads`). It gets two more kinds of
    input, the neurons (``past_neurons.{i}``) and last hidden state (``past_hidden``)
    of those tokens, which ``pool_mask`` covers like ``attention_mask`` does, so they
    are pooled with the rest; and it keeps, as outputs for such a later run, the
    ``present.*`` keys and values and every token's neurons (``token_neurons.{i}``)
    and last hidden state (``token_hidden``). Fed ``past`` tokens of length 0 it runs
    whole sentences. Those per-token outputs are the graph's own tensors under a new
    name, not ``Identity`` copies: ONNX Runtime runs every node whichever outputs a
    run asks for (:func:`keep_outputs`), so a copy would cost every batch.
    """
    graph = model.graph
    if POOL_MASK in {i.name for i in graph.input}:
        raise ModelError("this ONNX model has already been prepared by expertlens-lite")
    b = _Builder(model)
    attention = next(i for i in graph.input if i.name == "attention_mask")
    graph.input.append(helper.make_tensor_value_info(POOL_MASK, TensorProto.FLOAT, _dims(attention)))
    presents = [o for o in graph.output if o.name.startswith(PRESENT_OUTPUT)]
    with_past = bool(presents)
    mask3 = b.node("Unsqueeze", [POOL_MASK, b.constant("axis_last", [2])], "mask3")
    count = b.reduce("ReduceSum", mask3, 1, "count", keepdims=0)  # [batch, 1], past included
    neg_inf = b.constant("neg_inf", np.array(-np.inf, dtype=np.float32))
    if with_past:
        hidden_size = _dims(next(o for o in graph.output if o.name == hidden_output))[-1]
        _rename(graph, hidden_output, TOKEN_HIDDEN)
        hidden_output = TOKEN_HIDDEN
        graph.input.append(helper.make_tensor_value_info(PAST_HIDDEN, TensorProto.FLOAT, ["batch_size", "past_sequence_length", hidden_size]))
        past = b.node("Shape", [PAST_HIDDEN], "past_length", start=1, end=2)
        mask3, past_mask3 = (
            b.node("Slice", [mask3, start, end, b.constant(f"{name}_axis", [1])], name)
            for name, start, end in (("tokens_mask3", past, b.constant("end", [np.iinfo(np.int64).max])), ("past_mask3", b.constant("zero", [0]), past))
        )
        past_keep3 = b.node("Cast", [past_mask3], "past_keep3", to=TensorProto.BOOL)
    keep3 = b.node("Cast", [mask3], "keep3", to=TensorProto.BOOL)

    def pooled_max(x: str, past: str | None, name: str) -> str:
        """Max of ``x`` ``[batch, seq, d]`` over the pooled tokens, those of ``past``
        ``[batch, past, d]`` included."""
        highest = b.reduce("ReduceMax", b.node("Where", [keep3, x, neg_inf], f"{name}_where"), 1, f"{name}_max", keepdims=0)
        if past is None:
            return highest
        masked = b.node("Where", [past_keep3, past, neg_inf], f"{name}_past_where")
        return b.node("Max", [highest, b.reduce("ReduceMax", masked, 1, f"{name}_past_max", keepdims=0)], f"{name}_all_max")

    def pooled_mean(x: str, past: str | None, name: str) -> str:
        """Mean of ``x`` over the same tokens as :func:`pooled_max`."""
        total = b.reduce("ReduceSum", b.node("Mul", [x, mask3], f"{name}_masked"), 1, f"{name}_sum", keepdims=0)
        if past is not None:
            masked = b.node("Mul", [past, past_mask3], f"{name}_past_masked")
            total = b.node("Add", [total, b.reduce("ReduceSum", masked, 1, f"{name}_past_sum", keepdims=0)], f"{name}_all_sum")
        return b.node("Div", [total, count], f"{name}_mean")

    def output(tensor: str, name: str, dims: list) -> None:
        if tensor != name:
            graph.node.append(helper.make_node("Identity", [tensor], [name], name=f"/elens/{name}"))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))

    # Some families (OPT) flatten tokens to [batch*seq, d] around the MLP; viewing every
    # neuron tensor as [batch, seq, d] handles them without a special case.
    batch_seq = b.node("Shape", ["input_ids"], "batch_seq")
    view_shape = b.node("Concat", [batch_seq, b.constant("minus_one", [-1])], "view_shape", axis=0)
    outputs: list[onnx.ValueInfoProto] = []
    token_outputs: list[tuple[str, list]] = []  # (the graph's own tensor, its dims)
    for layer, (scope, d_mlp) in enumerate(zip(scopes, units)):
        x = b.node("Reshape", [scope_input(graph, scope), view_shape], f"l{layer}_view", token_neurons(layer) if with_past else None)
        past = None
        if with_past:
            past = past_neurons(layer)
            graph.input.append(helper.make_tensor_value_info(past, TensorProto.FLOAT, ["batch_size", "past_sequence_length", d_mlp]))
            token_outputs.append((x, ["batch_size", "sequence_length", d_mlp]))
        pooled = {"max": pooled_max(x, past, f"l{layer}"), "mean": pooled_mean(x, past, f"l{layer}")}
        for pooling in POOLINGS:
            output(pooled[pooling], neuron_output(layer, pooling), ["batch_size", d_mlp])
    output(pooled_mean(hidden_output, PAST_HIDDEN if with_past else None, "sentence"), SENTENCE_EMBEDDING, ["batch_size", None])
    if with_past:
        token_outputs.append((TOKEN_HIDDEN, ["batch_size", "sequence_length", hidden_size]))
    for name, dims in token_outputs:
        output(name, name, dims)
    del graph.output[:]
    graph.output.extend(outputs + presents)


def keep_outputs(model: onnx.ModelProto, keep: Callable[[str], bool]) -> None:
    """Rewrite ``model`` in place to compute only the outputs whose names ``keep`` accepts.

    Why: ONNX Runtime runs every node of a graph, whichever outputs a run asks for
    (microsoft/onnxruntime#16483; ``RunOptions.only_execute_path_to_fetches`` works in
    training builds only). A prepared graph offers both poolings, so a run would pay
    for the pooling it does not read: on SmolLM2's run path, 1.8% of the float32 time
    and 3.7% of the int8 time (A/B, BENCHMARKS.md). Nodes no kept output depends on are
    dropped, then the initializers only they read.
    """
    graph = model.graph
    kept = [o for o in graph.output if keep(o.name)]
    producer = {name: index for index, node in enumerate(graph.node) for name in node.output}
    wanted = [o.name for o in kept]
    needed: set[int] = set()
    while wanted:  # not one backward pass: a converter (float16) may append nodes out of order
        index = producer.get(wanted.pop())
        if index is not None and index not in needed:
            needed.add(index)
            wanted.extend(_node_inputs(graph.node[index]))
    nodes = [node for index, node in enumerate(graph.node) if index in needed]
    del graph.output[:]
    graph.output.extend(kept)
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unused_initializers(graph)


def _node_inputs(node: onnx.NodeProto) -> set[str]:
    """The tensors a node reads, those its subgraphs (If, Loop) read from outside included."""
    names = {name for name in node.input if name}
    for attribute in node.attribute:
        for subgraph in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
            for inner in subgraph.node:
                names |= _node_inputs(inner)
    return names


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Give the tensor ``old`` the name ``new`` wherever the graph names it."""
    for node in graph.node:
        for names in (node.input, node.output):
            for i, name in enumerate(names):
                if name == old:
                    names[i] = new
    for value in graph.output:
        if value.name == old:
            value.name = new


def _dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
