"""Per-architecture knowledge: where a family's MLP neurons live.

One small declarative :class:`Architecture` entry per family, registered by the
Hugging Face ``config.model_type`` values it covers (the pattern of Optimum's
``TasksManager`` and TransformerLens' ``supported_architectures``). A neuron is a
unit of the input of the MLP down-projection (post-activation; ``act(gate) * up``
for SwiGLU models), so an entry only has to name that module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError, first_line
from ..paths import expanded


@dataclass(frozen=True)
class Architecture:
    """Where the MLP neurons of one model family are.

    Attributes:
        name: family name shown to users (``"llama"``).
        model_types: the ``config.model_type`` values this entry covers.
        mlp_down: module path of the MLP down-projection inside the *base* model
            (``AutoModel``, what a feature-extraction export contains), with a
            ``{layer}`` placeholder; its input is the neuron layer.
        causal: whether the model is a decoder (left-to-right attention). Causal
            models see a constant BOS token first, which carries no sentence
            information and is left out of pooling by default.
    """

    name: str
    model_types: tuple[str, ...]
    mlp_down: str
    causal: bool

    def __post_init__(self) -> None:
        """Refuse fields a registration would misread: ``model_types=("cohere")`` is a
        string, whose letters were registered one by one; an ``mlp_down`` with another
        placeholder failed only in the export (found by an audit)."""
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"an architecture's name must be a non-empty string; got {self.name!r}")
        types = self.model_types
        if isinstance(types, str) or not isinstance(types, (tuple, list)) or not types or not all(isinstance(t, str) and t for t in types):
            raise ValueError(f"model_types of {self.name!r} must be a tuple of strings, e.g. ('llama',); got {types!r}")
        object.__setattr__(self, "model_types", tuple(types))
        if not isinstance(self.mlp_down, str) or "{layer}" not in self.mlp_down:
            raise ValueError(f"mlp_down of {self.name!r} must be a string containing '{{layer}}': {self.mlp_down!r}")
        try:
            self.mlp_down_module(0)
        except (KeyError, IndexError, ValueError):
            raise ValueError(f"mlp_down of {self.name!r} may hold no placeholder but '{{layer}}': {self.mlp_down!r}") from None
        if self.causal is not True and self.causal is not False:
            raise ValueError(f"causal of {self.name!r} must be True or False; got {self.causal!r}")

    def mlp_down_module(self, layer: int) -> str:
        """PyTorch module path of layer ``layer``'s down-projection."""
        return self.mlp_down.format(layer=layer)

    def onnx_scope(self, layer: int) -> str:
        """Node-name prefix that the TorchScript ONNX exporter gives that module.

        The exporter joins module names with ``/`` and writes a ``ModuleList``
        index together with its parent (``layers.3``), so
        ``encoder.layer.3.output.dense`` becomes ``/encoder/layer.3/output/dense/``.
        """
        scope = ""
        for part in self.mlp_down_module(layer).split("."):
            scope += f".{part}" if part.isdigit() else f"/{part}"
        return scope + "/"


_REGISTRY: dict[str, Architecture] = {}


def register(architecture: Architecture) -> Architecture:
    """Add ``architecture`` for each of its model types; a type may not be claimed twice."""
    for model_type in architecture.model_types:
        owner = _REGISTRY.get(model_type)
        if owner is not None and owner != architecture:
            raise ValueError(f"model type {model_type!r} is already registered by {owner.name!r}")
    for model_type in architecture.model_types:
        _REGISTRY[model_type] = architecture
    return architecture


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


def get_architecture(model_type: str) -> Architecture:
    """The entry for ``model_type``; unknown types raise naming the supported ones."""
    try:
        return _REGISTRY[model_type]
    except KeyError:
        raise ModelError(
            f"unsupported model architecture {model_type!r}; supported: {', '.join(supported_model_types())} "
            "(add one with expertlens_lite.models.register, or a file of such calls given to elens-lite --families; see the README)"
        ) from None


def register_from_file(path: str | Path) -> None:
    """Run the Python file ``path``, whose :func:`register` calls add families: how
    ``elens-lite --families FILE`` gives the command line the README's recipe. Any
    failure of the file is one :class:`ModelError` line naming it, and its line."""
    import runpy
    import traceback

    path = expanded(path)
    if not path.is_file():
        raise ModelError(f"--families {path}: {'a folder, not a file' if path.is_dir() else 'no such file'}")
    try:
        runpy.run_path(str(path), run_name="expertlens_lite_families")
    except (Exception, SystemExit) as exc:  # noqa: BLE001  (the user's code: whatever it raises, exit() too, is one line)
        lines = [frame.lineno for frame in traceback.extract_tb(exc.__traceback__) if Path(frame.filename) == path]
        line = getattr(exc, "lineno", None) if isinstance(exc, SyntaxError) else (lines[-1] if lines else None)
        at = f"{path}:{line}" if line else str(path)
        raise ModelError(f"--families {at}: {type(exc).__name__}: {first_line(exc)}") from None
