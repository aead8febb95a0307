"""Hub revisions (Pythia's ``stepN`` checkpoints): each is exported from its own
commit's weights, under its own cache key, and a revision is refused where it
cannot apply.

Nothing can be downloaded here, so the checkpoints are two tiny random GPT-NeoX
models laid out as the Hugging Face cache holds a hub repository's revisions, and
``elens-lite`` runs offline in a subprocess (the hub settings are read at import).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from expertlens_lite.batching import PoolingOptions, encode, make_batch, pad_id
from expertlens_lite.export import ExportedModel, load_pretrained
from expertlens_lite.export.manifest import Manifest
from expertlens_lite.export.reference import torch_responses
from expertlens_lite.models.sources import ModelSource

from .test_cli import assert_user_error, invoke
from .test_parity import ATOL, onnx_responses, tiny_sentences, tiny_source

REPO = "acme/pythia-tiny"


def _trained_longer(model) -> None:
    """A later checkpoint: the same architecture with other weights."""
    import torch

    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))


def lay_out_hub_cache(hub: Path, repo_id: str, revisions: dict[str, Path]) -> dict[str, str]:
    """Put model folders into ``hub`` as revisions of ``repo_id``, laid out as
    huggingface_hub does: ``refs/<revision>`` names a commit, ``snapshots/<commit>/``
    holds links to the files in ``blobs/``. Returns revision -> commit."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    for sub in ("refs", "blobs"):
        (repo / sub).mkdir(parents=True, exist_ok=True)
    commits = {}
    for revision, folder in revisions.items():
        commit = hashlib.sha1(revision.encode()).hexdigest()
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for file in folder.iterdir():
            blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
            shutil.copyfile(file, blob)
            (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob.name))
        (repo / "refs" / revision).write_text(commit)
        commits[revision] = commit
    return commits


def elens_lite(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("elens-lite")), *args]
    return subprocess.run(command, env=os.environ | env, capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[dict[str, Path], dict[str, str], dict[str, str]]:
    """Folders of two checkpoints, their commits in a hub cache, and the environment
    that makes ``elens-lite`` read that cache offline."""
    root = tmp_path_factory.mktemp("revisions")
    folders = {"step1000": root / "step1000", "step2000": root / "step2000"}
    tiny_source("gpt_neox", folders["step1000"])
    tiny_source("gpt_neox", folders["step2000"], edit=_trained_longer)
    commits = lay_out_hub_cache(root / "hub", REPO, folders)
    env = {"HF_HUB_CACHE": str(root / "hub"), "HF_HUB_OFFLINE": "1", "ELENS_HOME": str(root / "elens_home")}
    return folders, commits, env


def test_each_revision_is_exported_from_its_own_commit(checkpoints, tmp_path):
    folders, commits, env = checkpoints
    batch = None
    for revision in ("step1000", "step2000"):
        done = elens_lite("export", "--model", REPO, "--revision", revision, "--out", str(tmp_path / revision), env=env)
        assert done.returncode == 0, done.stderr
        exported = ExportedModel(tmp_path / revision, Manifest.load(tmp_path / revision))
        assert (exported.manifest.revision, exported.manifest.commit) == (revision, commits[revision])
        got, _ = onnx_responses(exported, batch or (batch := _batch(folders[revision])))
        for other, folder in folders.items():
            architecture, model, _ = load_pretrained(ModelSource(other, str(folder), None, other))
            expected, _ = torch_responses(model, architecture, batch)
            if other == revision:
                assert np.abs(got - expected).max() <= ATOL
            else:
                assert np.abs(got - expected).max() > 100 * ATOL, "the other checkpoint's weights were exported"
    cached = sorted(p.name for p in (Path(env["ELENS_HOME"]) / "models").iterdir())
    assert len(cached) == 2 and all(name.startswith("pythia-tiny-") for name in cached), cached


def test_an_unreachable_hub_is_asked_once_then_the_cache_is_read(checkpoints, tmp_path):
    """Without ``HF_HUB_OFFLINE``, a hub that does not answer is noticed by one request
    and the checkpoint is read from the cache: no file lookup goes through
    huggingface_hub's five retries (about 23 s each; 7 minutes for this export)."""
    _, commits, env = checkpoints
    env = env | {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "ELENS_HOME": str(tmp_path / "home")}
    done = elens_lite("export", "--model", REPO, "--revision", "step2000", "--out", str(tmp_path / "x"), env=env)
    assert done.returncode == 0, done.stderr
    assert "Retrying" not in done.stderr, done.stderr
    manifest = Manifest.load(tmp_path / "x")
    assert (manifest.model, manifest.revision, manifest.commit) == (REPO, "step2000", commits["step2000"])


def _batch(folder: Path) -> dict[str, np.ndarray]:
    _, _, tokenizer = load_pretrained(ModelSource("tiny", str(folder), None, "tiny"))
    sentences = tiny_sentences()
    return make_batch(encode(tokenizer, sentences), range(len(sentences)), pad_id(tokenizer), PoolingOptions())


def test_a_revision_missing_from_the_cache_is_one_line(checkpoints, tmp_path):
    done = elens_lite("export", "--model", REPO, "--revision", "step3000", "--out", str(tmp_path / "x"), env=checkpoints[2])
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot load model 'acme/pythia-tiny' (revision step3000)"), lines
    assert not (tmp_path / "x").exists()


def test_a_model_the_cache_holds_without_weights_is_said_to_be_there_in_part(checkpoints, tmp_path):
    """It was told that it must already be in the Hugging Face cache, where it was (an audit)."""
    folder = tmp_path / "no-weights"
    folder.mkdir()
    for file in checkpoints[0]["step1000"].iterdir():
        if file.suffix != ".safetensors":
            shutil.copyfile(file, folder / file.name)
    env = checkpoints[2] | {"HF_HUB_CACHE": str(tmp_path / "hub")}
    lay_out_hub_cache(tmp_path / "hub", "acme/partial", {"main": folder})
    done = elens_lite("export", "--model", "acme/partial", "--out", str(tmp_path / "x"), env=env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot load model 'acme/partial': "), lines
    assert lines[0].endswith("(the Hugging Face cache holds only part of it; download it whole where the hub can be reached)"), lines


@pytest.mark.parametrize("what", ["bundled", "folder"])
def test_a_revision_of_a_local_model_is_refused(checkpoints, tmp_path, what):
    model = "minilm" if what == "bundled" else str(checkpoints[0]["step1000"])
    result = invoke("export", "--model", model, "--revision", "step1000", "--out", str(tmp_path / "x"))
    assert_user_error(result, "--revision step1000 applies to hub model ids", "whose weights are the ones on disk")


def test_optimum_copies_no_tokenizer_from_where_the_model_was_loaded(tmp_path, monkeypatch):
    """For a hub id, Optimum's exporter would fetch the tokenizer at the default revision
    (and ask for processors), not at the one asked; only the export's own load reads it."""
    from transformers import AutoTokenizer

    from expertlens_lite.export import export_model

    source = tiny_source("gpt_neox", tmp_path / "model")
    reads = []
    real = AutoTokenizer.from_pretrained.__func__

    def recorded(cls, path, *args, **kwargs):
        reads.append(str(path))
        return real(cls, path, *args, **kwargs)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(recorded))
    export_model(source, tmp_path / "home")
    assert reads.count(source.path) == 1
