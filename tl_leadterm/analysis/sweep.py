"""One analysis call for any model, and sweeps over checkpoints (Pythia revisions, local directories, toy:PATH)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..basis import Basis
from ..errors import require
from ..models import PYTHIA_REVISIONS, ModelAdapter, load_model, validate_revision
from .measures import Targets
from .model import analyze_model
from .toy import analyze_toy


def analyze(ad: ModelAdapter, basis: Basis, checkpoint: str = "", *, circuits: bool = True, residuals: bool = True,
            dictionary: bool = False, progress: bool = True, targets: Targets | None = None) -> pd.DataFrame:
    """:func:`analyze_toy` for a token-space (toy) model, :func:`analyze_model` for any other."""
    if ad.token_space:
        return analyze_toy(ad, basis, dictionary=dictionary, checkpoint=checkpoint)
    return analyze_model(ad, basis, checkpoint=checkpoint, circuits=circuits, residuals=residuals, dictionary=dictionary,
                         progress=progress, targets=targets)


def parse_checkpoints(items: Sequence[str] | str) -> list[str]:
    """Split a comma list; check each entry is a Pythia revision, a local directory or toy:PATH."""
    if isinstance(items, str):
        items = [s for s in (x.strip() for x in items.split(",")) if s]
    items = list(items)
    require(len(items) > 0, "no checkpoints given; list Pythia revisions (step0,step1,...) or local model directories")
    out = []
    for it in items:
        s = str(it)
        if s.startswith("toy:") or Path(s).is_dir():
            out.append(s)
        else:
            out.append(validate_revision(s))
    return out


def sweep(model: str | None, checkpoints: Sequence[str] | str, basis: Basis, *, backend: str = "auto",
          device="cpu", circuits: bool = True, residuals: bool = True, dictionary: bool = False,
          progress: bool = True, labels: Sequence[str] | None = None) -> pd.DataFrame:
    """Analyse several checkpoints in one call and concatenate the tables.

    ``checkpoints`` are Pythia revisions (``stepN``, loaded as ``model`` at that
    revision), local model directories, or ``toy:PATH`` (each loaded on its own;
    ``model`` may then be None).  Every name is checked before anything is loaded.
    ``labels`` name the checkpoints in the table (default: the names as given).
    The basis' O(k³) preparation is done once for all checkpoints.
    """
    ckpts = parse_checkpoints(checkpoints)
    labels = list(ckpts) if labels is None else [str(x) for x in labels]
    require(len(labels) == len(ckpts), f"{{labels}} has {len(labels)} names for {len(ckpts)} checkpoints; give one each")
    for c in ckpts:
        if c in PYTHIA_REVISIONS:
            require(model, f"checkpoint {c} is a hub revision: give {{model}} (a hub name such as EleutherAI/pythia-70m)")
    frames = []
    targets = None  # prepared once for all checkpoints (O(k³) per basis tensor)
    for c, label in tqdm(list(zip(ckpts, labels)), desc="checkpoints", disable=not progress):
        if c in PYTHIA_REVISIONS:
            ad = load_model(model, revision=c, backend=backend, device=device)
        else:
            ad = load_model(c, backend=backend, device=device)
        if targets is None or targets.device != torch.device(ad.device):
            targets = Targets(basis, ad.device)
        frames.append(analyze(ad, basis, checkpoint=label, circuits=circuits, residuals=residuals, dictionary=dictionary,
                              progress=progress, targets=targets))
        del ad
    return pd.concat(frames, ignore_index=True)
