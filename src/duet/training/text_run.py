"""A text run's data and model, read back from its folder (for evaluation, export, drift).

What a text run folder records (written by ``duet.training.text_fit``):

- run.json: ``modality: text``, ``labels``, ``model``, ``text_spec`` (the fitted
  ``TextSpec``), ``source`` (the corpus: path, layout, text column and target of
  a table, and a fingerprint of the documents as read), ``docs`` (per split),
  ``best``, ``baseline``, ``throughput``;
- splits.json: each split's indices into the documents ``read_corpus`` keeps of
  ``source.data`` (with ``source.val_data``, validation is that whole corpus);
- checkpoints/best.safetensors: the weights of the epoch validation chose.

The corpus is read again rather than copied into the run folder: the user's
files stay the one source, and a changed corpus is caught by its fingerprint
(sha256 over every kept document's origin, label and text) instead of silently
giving other documents.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from duet.data.text.spec import TextSpec, encode
from duet.errors import RunError
from duet.training.run_info import SPLITS_FILE, is_modality_run, load_best, read_modality_info
from duet.training.text_models import build_text_model

if TYPE_CHECKING:
    from duet.data.text.read import TextCorpus

PREDICT_CHUNK = 2048  # documents per forward pass


@dataclass
class SplitTexts:
    """One split's documents: text, class name and where each came from ("neg/0001.txt", "x.csv line 17")."""

    texts: list[str]
    labels: list[str]
    origins: list[str]

    def __len__(self) -> int:
        return len(self.texts)


def corpus_fingerprint(corpus: TextCorpus) -> str:
    """sha256 over every kept document's origin, label and text: a changed corpus changes it."""
    h = hashlib.sha256()
    for origin, label, text in zip(corpus.origins, corpus.labels, corpus.texts):
        for part in (origin, label, text):
            h.update(part.encode("utf-8", "surrogatepass") + b"\x1f")
    return h.hexdigest()


def take(corpus: TextCorpus, index: np.ndarray | list[int]) -> SplitTexts:
    rows = [int(i) for i in index]
    return SplitTexts(
        [corpus.texts[i] for i in rows], [corpus.labels[i] for i in rows], [corpus.origins[i] for i in rows]
    )


def whole(corpus: TextCorpus) -> SplitTexts:
    return SplitTexts(list(corpus.texts), list(corpus.labels), list(corpus.origins))


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """run.json of a text run; RunError when the folder is not one."""
    return read_modality_info(run_dir, "text")


def is_text_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a text run (run.json says so)."""
    return is_modality_run(run_dir, "text")


def reread(source: dict[str, Any], key: str = "data") -> TextCorpus:
    """The run's corpus (``key`` "data" or "val_data") read again; RunError when it changed or is gone."""
    from duet.data.text.read import read_corpus

    path = Path(source[key])
    if not path.exists():
        raise RunError(f"the run's corpus '{path}' is gone; it is needed to read the run's split documents")
    corpus = read_corpus(path, text_column=source.get("text_column"), target=source.get("target"))
    expected = source["fingerprint" if key == "data" else "val_fingerprint"]
    if corpus_fingerprint(corpus) != expected:
        raise RunError(f"the run's corpus '{path}' changed since training (its documents differ); its splits are lost")
    return corpus


def load_split_corpus(run_dir: Path) -> dict[str, SplitTexts]:
    """``{"train", "val", "test"}`` -> the run's documents of each split (a split may be empty)."""
    source = read_run_info(run_dir)["source"]
    splits = json.loads((Path(run_dir) / SPLITS_FILE).read_text(encoding="utf-8"))
    corpus = reread(source)
    out = {name: take(corpus, splits[name]) for name in ("train", "val", "test")}
    if source.get("val_data"):
        out["val"] = whole(reread(source, "val_data"))
    return out


def load_split_texts(run_dir: Path) -> dict[str, tuple[list[str], list[str]]]:
    """``{"train", "val", "test"}`` -> (texts, class names) of the run's split."""
    return {name: (split.texts, split.labels) for name, split in load_split_corpus(run_dir).items()}


def load_text_model(run_dir: Path) -> tuple[torch.nn.Module, TextSpec, list[str]]:
    """The run's best weights in eval mode on the CPU, with its spec and labels."""
    info = read_run_info(run_dir)
    spec = TextSpec.from_dict(info["text_spec"])
    labels = [str(x) for x in info["labels"]]
    model = build_text_model(str(info["model"]), spec, len(labels))
    return load_best(model, run_dir), spec, labels


@torch.no_grad()
def predict_proba(model: torch.nn.Module, spec: TextSpec, texts: list[str]) -> np.ndarray:
    """Class probabilities float32 ``[N, classes]``: softmax of ``model`` on the texts' ids (``encode``)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    parts = []
    for start in range(0, len(texts), PREDICT_CHUNK) if texts else [0]:  # no text: one empty [0, C] pass
        ids = torch.from_numpy(encode(spec, texts[start : start + PREDICT_CHUNK])).to(device)
        parts.append(torch.softmax(model(ids).float(), dim=1).cpu().numpy())
    model.train(was_training)
    return np.concatenate(parts).astype(np.float32)
