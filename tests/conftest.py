import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# the shared data beside the repository (../shared); TL_LEADTERM_SHARED points elsewhere
SHARED = Path(os.environ.get("TL_LEADTERM_SHARED") or Path(__file__).resolve().parents[1].parent / "shared")
DATA = SHARED / "data"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"{DATA} is not present (set TL_LEADTERM_SHARED to the shared folder)")
    return DATA


@pytest.fixture(scope="session")
def tiny_pythia_dir(shared_data, tmp_path_factory) -> Path:
    """A randomly initialised 2-layer Pythia-architecture model (d_model 64, 4 heads, vocab 50304) with the Pythia tokenizer."""
    from tl_leadterm.models import save_random_pythia

    return save_random_pythia(tmp_path_factory.mktemp("tiny_pythia"), shared_data / "gpt-neox-20b-tokenizer.json")


@pytest.fixture(scope="module")
def one_thread():
    """Small matrices: one thread is faster and kinder to a shared CPU (restored afterwards)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def corpus():
    """The small Markov corpus of the exactness tests (reference.V, T, N)."""
    from reference import N, T, V, markov_tokens
    from tl_leadterm import windows_from_tokens

    return windows_from_tokens(markov_tokens(V, T, N, seed=3), V)


@pytest.fixture(scope="module")
def full_basis(corpus):
    """The exact basis of ``corpus`` over its whole vocabulary, in id order."""
    from tl_leadterm import compute_basis

    return compute_basis(corpus, token_ids=list(range(corpus.vocab_size)), progress=False)
