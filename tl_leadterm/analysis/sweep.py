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
from .model import analyze_model, check_numbers
from .toy import analyze_toy


def analyze(ad: ModelAdapter, basis: Basis, checkpoint: str = "", *, circuits: bool = True, residuals: bool = True,
            dictionary: bool = False, progress: bool = True, targets: Targets | None = None, **kw) -> pd.DataFrame:
    """:func:`analyze_toy` for a token-space (toy) model (``kw``: its ``top`` and ``n_singular`` are used, the rest
    is for other models), :func:`analyze_model` for any other (``kw``: its options)."""
    if ad.token_space:
        kw = check_numbers(kw)
        return analyze_toy(ad, basis, dictionary=dictionary, checkpoint=checkpoint,
                           **{n: kw[n] for n in ("top", "n_singular") if n in kw})
    return analyze_model(ad, basis, checkpoint=checkpoint, circuits=circuits, residuals=residuals, dictionary=dictionary,
                         progress=progress, targets=targets, **kw)


def _split_checkpoints(text: str) -> list[str]:
    """A comma list, where the longest run of pieces that names an existing folder (or toy:folder) stays one entry."""
    pieces, out, i = text.split(","), [], 0
    while i < len(pieces):
        j = next((j for j in range(len(pieces), i + 1, -1)
                  if Path(",".join(pieces[i:j]).strip().removeprefix("toy:")).is_dir()), i + 1)
        entry = ",".join(pieces[i:j]).strip()
        if entry:
            out.append(entry)
        i = j
    return out


def parse_checkpoints(items: Sequence | str) -> list:
    """Split a comma list; check each entry is a Pythia revision, a local directory or toy:PATH.

    Entries that are not strings (a loaded model or :class:`ModelAdapter`) are kept as they are.
    A local directory (or toy:PATH) whose name holds a comma is kept whole in a comma string.
    """
    if isinstance(items, str):
        items = _split_checkpoints(items)
    items = list(items)
    require(len(items) > 0, "no checkpoints given; list Pythia revisions (step0,step1,...) or local model directories")
    out = []
    for it in items:
        if not isinstance(it, (str, Path)):
            out.append(it)
            continue
        s = str(it)
        if s.startswith("toy:") or Path(s).is_dir():
            out.append(s)
        else:
            out.append(validate_revision(s))
    return out


def _load(model, c, backend, device):
    if not isinstance(c, str):
        return load_model(c)                      # a loaded model: wrapped, never changed
    if c in PYTHIA_REVISIONS:
        return load_model(model, revision=c, backend=backend, device=device)
    return load_model(c, backend=backend, device=device)


def sweep(model: str | None, checkpoints: Sequence | str, basis: Basis, *, backend: str = "auto",
          device="cpu", circuits: bool = True, residuals: bool = True, dictionary: bool = False,
          progress: bool = True, labels: Sequence[str] | None = None, lens: Sequence[str] | str = ("weights",),
          reference=None, gradient=None, **kw) -> pd.DataFrame:
    """Analyse several checkpoints in one call and concatenate the tables.

    ``checkpoints`` are Pythia revisions (``stepN``, loaded as ``model`` at that
    revision), local model directories, ``toy:PATH``, or models already loaded (a TransformerLens
    model or adapter; give ``labels``).  Every name is checked before anything is loaded.
    ``labels`` name the checkpoints in the table (default: the names as given).
    ``lens`` (:mod:`.lenses`): ``reference`` for the update lens is ``"first"`` (the first checkpoint),
    ``"previous"`` (each checkpoint's predecessor; the first has no update rows), a checkpoint's label,
    or a model / directory / revision of its own.  ``gradient``: windows for the gradient lens (every
    checkpoint).  ``kw``: :func:`analyze_model` options (``null_draws``, ``seed``, ``sites``, ...).
    The basis' O(k³) preparation is done once for all checkpoints.
    """
    from .lenses import parse_lenses

    kw = check_numbers(kw)                    # every number before anything is loaded
    ckpts = parse_checkpoints(checkpoints)
    labels = [c if isinstance(c, str) else f"model{i}" for i, c in enumerate(ckpts)] if labels is None else [str(x) for x in labels]
    require(len(labels) == len(ckpts), f"{{labels}} has {len(labels)} names for {len(ckpts)} checkpoints; give one each")
    for c in ckpts:
        if isinstance(c, str) and c in PYTHIA_REVISIONS:
            require(model, f"checkpoint {c} is a hub revision: give {{model}} (a hub name such as EleutherAI/pythia-70m)")
    lenses = parse_lenses(lens)
    want_update = "update" in lenses
    ref_mode, ref_fixed, ref_label = None, None, ""
    if want_update:
        require(reference is not None, "the update lens needs {reference}: first, previous, a checkpoint label, or a model")
        if isinstance(reference, str) and reference in ("first", "previous"):
            ref_mode = reference
        elif isinstance(reference, str) and reference in labels:
            ref_mode, ref_label = "label", reference
        else:
            ref_fixed = _load(model, parse_checkpoints([reference])[0], backend, device) if isinstance(reference, (str, Path)) \
                else load_model(reference)
            ref_label = str(reference) if isinstance(reference, (str, Path)) else (ref_fixed.checkpoint or ref_fixed.name)
    frames = []
    targets = None  # prepared once for all checkpoints (O(k³) per basis tensor)
    first = prev = None
    first_label = prev_label = ""
    if ref_mode == "label":               # load the named reference first
        ref_fixed = _load(model, ckpts[labels.index(ref_label)], backend, device)
    for i, (c, label) in enumerate(tqdm(list(zip(ckpts, labels)), desc="checkpoints", disable=not progress)):
        ad = _load(model, c, backend, device)
        if targets is None or targets.device != torch.device(ad.device):
            targets = Targets(basis, ad.device)
        ref, rlabel = None, ""
        if want_update:
            if ref_mode == "first":
                ref, rlabel = (first, first_label) if i > 0 else (None, "")
            elif ref_mode == "previous":
                ref, rlabel = prev, prev_label
            else:
                ref, rlabel = ref_fixed, ref_label
                if isinstance(reference, (str, Path)) and isinstance(c, str) and str(reference) in (c, label):
                    ref = None                  # the reference itself: no update
        use = tuple(x for x in lenses if x != "update" or ref is not None)
        if ad.token_space:
            frames.append(analyze(ad, basis, checkpoint=label, circuits=circuits, residuals=residuals,
                                  dictionary=dictionary, progress=progress, targets=targets,
                                  **{n: kw[n] for n in ("top", "n_singular") if n in kw}))
        else:
            frames.append(analyze(ad, basis, checkpoint=label, circuits=circuits, residuals=residuals, dictionary=dictionary,
                                  progress=progress, targets=targets, lens=use, reference=ref, reference_label=rlabel,
                                  gradient=gradient, **kw))
        if i == 0:
            first, first_label = ad, label
        if ref_mode == "previous":
            prev, prev_label = ad, label
        del ad
    from .table import normalise
    return normalise(pd.concat(frames, ignore_index=True))


def sweep_distributed(model, checkpoints, basis, *, labels=None, **kwargs):
    """:func:`sweep` with the checkpoints spread over the torchrun ranks (round robin); the one table, in
    checkpoint order, on rank 0 (None on the others).  Must run inside
    :func:`tl_leadterm.basis.distributed.process_group`."""
    import torch.distributed as dist

    from ..basis.distributed import gather_frames

    ckpts = parse_checkpoints(checkpoints)
    rank, size = dist.get_rank(), dist.get_world_size()
    mine = list(range(rank, len(ckpts), size))
    # label rows by the checkpoint's position, so that a checkpoint listed twice stays two analyses
    frame = (sweep(model, [ckpts[i] for i in mine], basis, progress=False, labels=[f"#{i}" for i in mine], **kwargs)
             if mine else None)
    frames = gather_frames(frame)
    if frames is None:
        return None
    parts = {}
    for df in frames:
        if df is not None:
            for label, part in df.groupby("checkpoint", sort=False):
                i = int(label[1:])
                parts[i] = part.assign(checkpoint=labels[i] if labels is not None else ckpts[i])
    return pd.concat([parts[i] for i in range(len(ckpts))], ignore_index=True)
