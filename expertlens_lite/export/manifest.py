"""The manifest of an exported model: what it is, where its neurons are, how it was checked."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..atomic import file_sizes, size_damage, write_json
from ..paths import MANIFEST

FORMAT_VERSION = 7  # bump whenever the exported files change (graph, quantization)


@dataclass
class Manifest:
    """Everything later stages need to know about an exported model.

    ``units_per_layer[i]`` neurons of layer ``i`` occupy the response columns
    ``sum(units_per_layer[:i]) ...`` in layer order. ``files`` maps each ONNX file
    (one per quantization) to its SHA-256. ``prefix_token_ids``: the constant tokens
    every sentence starts with (:mod:`.prefix`), which with one more token make the
    heads that sentences share (:mod:`expertlens_lite.heads`). ``commit``: the hub
    commit of a hub model's ``revision`` (None for local models). ``sizes``: every file
    of the export folder but the manifest, by name, in bytes (:func:`damage`; empty in
    manifests written before it existed). ``tokenizer_json``: whether its ``tokenizer.json``
    alone tokenizes as transformers does (:mod:`.tokenizer`); None in manifests written
    before that check existed, until a run checks it. ``mlp_down``: the family entry's
    module (:class:`~expertlens_lite.models.Architecture`) the neurons were read from;
    None in manifests written before it was recorded.
    """

    model: str
    revision: str | None
    fingerprint: str
    architecture: str
    model_type: str
    causal: bool
    units_per_layer: list[int]
    hidden_size: int
    parity_max_abs_diff: float
    opset: int
    prefix_token_ids: list[int] = field(default_factory=list)
    commit: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    tokenizer_json: bool | None = None
    mlp_down: str | None = None
    format_version: int = FORMAT_VERSION

    @property
    def n_layers(self) -> int:
        return len(self.units_per_layer)

    @property
    def n_neurons(self) -> int:
        return sum(self.units_per_layer)

    def layer_and_unit(self) -> tuple[list[int], list[int]]:
        """Per response column, its layer and its unit index within the layer."""
        layers = [layer for layer, n in enumerate(self.units_per_layer) for _ in range(n)]
        units = [unit for n in self.units_per_layer for unit in range(n)]
        return layers, units

    def save(self, directory: Path) -> None:
        """Write the manifest, with the size of every other file now in ``directory``."""
        self.sizes = file_sizes(directory, leave_out=MANIFEST)
        write_json(directory / MANIFEST, asdict(self) | getattr(self, "_later_fields", {}))

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        """The manifest in ``directory``; ValueError or TypeError when it is not one.
        Fields this version does not know (a later version's, in a cache both use) are
        kept aside, not refused, and written back by :meth:`save`: the format version says
        whether the export can be read."""
        data = json.loads((directory / MANIFEST).read_text())
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        known = {f.name for f in fields(cls)}
        manifest = cls(**{key: value for key, value in data.items() if key in known})
        manifest._later_fields = {key: value for key, value in data.items() if key not in known}
        manifest._check_types()
        return manifest

    def _check_types(self) -> None:
        """Refuse fields of the wrong type (a manifest edited by hand), which would
        otherwise fail a run later, deep inside it, with a TypeError."""

        def ints(value) -> bool:
            return isinstance(value, list) and all(isinstance(v, int) for v in value)

        def mapping(value, kind: type) -> bool:
            return isinstance(value, dict) and all(isinstance(v, kind) for v in value.values())

        checks = {
            "units_per_layer": ints(self.units_per_layer),
            "prefix_token_ids": ints(self.prefix_token_ids),
            "hidden_size": isinstance(self.hidden_size, int),
            "causal": isinstance(self.causal, bool),
            "files": mapping(self.files, str),
            "sizes": mapping(self.sizes, int),
            "tokenizer_json": self.tokenizer_json is None or isinstance(self.tokenizer_json, bool),
            "mlp_down": self.mlp_down is None or isinstance(self.mlp_down, str),
        }
        wrong = [name for name, right in checks.items() if not right]
        if wrong:
            raise ValueError(f"fields of the wrong type: {', '.join(wrong)}")


def damage(directory: Path) -> str | None:
    """What is wrong with the export folder ``directory``, if anything: a manifest that
    cannot be read, or a file it lists missing or of another size."""
    try:
        manifest = Manifest.load(directory)
    except (OSError, ValueError, TypeError) as exc:
        return f"{MANIFEST} cannot be read: {exc}"
    return size_damage(directory, manifest.sizes)
