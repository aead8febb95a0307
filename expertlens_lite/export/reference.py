"""PyTorch reference responses: forward hooks on the down-projections + NumPy pooling.

This is how ml-selfcond reads responses, kept as the ground truth that every
export is validated against (and the baseline of the inference benchmark). It
needs PyTorch, which the rest of the package does not import.
"""

from __future__ import annotations

import inspect

import numpy as np

from ..models import Architecture


def pool_tokens(x: np.ndarray, pool_mask: np.ndarray, pooling: str) -> np.ndarray:
    """Pool ``x`` ``[batch, seq, d]`` over tokens where ``pool_mask`` ``[batch, seq]`` is 1."""
    keep = pool_mask.astype(bool)[:, :, None]
    if pooling == "max":
        return np.where(keep, x, -np.inf).max(axis=1)
    return (x * keep).sum(axis=1) / keep.sum(axis=1)


def torch_inputs(model, architecture: Architecture, batch: dict[str, np.ndarray]) -> dict:
    """The tensors of ``batch`` that ``model.forward`` gets: those of a feature-extraction
    export, position ids for decoders and token types for encoders (GPT-2 would add an
    embedding for token types it is given), as far as the model takes them."""
    import torch

    names = {"input_ids", "attention_mask", "position_ids" if architecture.causal else "token_type_ids"}
    accepted = set(inspect.signature(model.forward).parameters)
    return {k: torch.from_numpy(v) for k, v in batch.items() if k in names & accepted}


def torch_activations(model, architecture: Architecture, batch: dict[str, np.ndarray], use_cache: bool = False):
    """Every layer's neurons ``[batch, seq, d_mlp]``, the last hidden state and, with
    ``use_cache``, the key/value cache the forward pass returns."""
    import torch

    captured: dict[int, np.ndarray] = {}
    handles = []
    n_layers = model.config.num_hidden_layers
    for layer in range(n_layers):
        module = model.get_submodule(architecture.mlp_down_module(layer))

        def hook(_module, args, layer=layer):  # OPT passes [batch*seq, d]: view as [batch, seq, d]
            captured[layer] = args[0].detach().float().reshape(*batch["input_ids"].shape, -1).numpy()

        handles.append(module.register_forward_pre_hook(hook))
    inputs = torch_inputs(model, architecture, batch)
    if "use_cache" in inspect.signature(model.forward).parameters:  # encoders such as DistilBERT have none
        inputs["use_cache"] = use_cache
    try:
        with torch.no_grad():
            out = model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    neurons = [captured[layer] for layer in range(n_layers)]
    return neurons, out.last_hidden_state.float().numpy(), out.past_key_values if use_cache else None


def torch_responses(model, architecture: Architecture, batch: dict[str, np.ndarray], pooling: str = "max") -> tuple[np.ndarray, np.ndarray]:
    """Pooled neuron responses ``[batch, n_neurons]`` and sentence embeddings ``[batch, hidden]``.

    ``model`` is the base (``AutoModel``) PyTorch model; ``batch`` comes from
    :func:`expertlens_lite.batching.make_batch`.
    """
    neurons, hidden, _ = torch_activations(model, architecture, batch)
    return pool_activations(neurons, hidden, batch["pool_mask"], pooling)


def pool_activations(neurons: list[np.ndarray], hidden: np.ndarray, pool_mask: np.ndarray, pooling: str) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`torch_responses` returns, from :func:`torch_activations`' output: one
    forward pass can then be pooled under several masks (the masks of the pooling options
    differ only in which tokens take part, not in the model's inputs)."""
    pooled = np.concatenate([pool_tokens(x, pool_mask, pooling) for x in neurons], axis=1)
    return pooled.astype(np.float32), pool_tokens(hidden, pool_mask, "mean").astype(np.float32)
