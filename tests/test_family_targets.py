"""One Family for heads, circuits and representations (X = E G, identity on the right), and prepared targets that
read T a block of rows at a time (no float64 k x k copy), both against dense float64 computations."""

import pytest
import torch
from torch.overrides import TorchFunctionMode

from tl_leadterm import LeadTermError
from tl_leadterm.analysis import Factored, Family, Target
from tl_leadterm.analysis.chance import family_null, representation_null
from tl_leadterm.analysis.measures import (cka_dense, cov_cosine_dense, centre_cols, centre_rows, fro_cos,
                                           row_normalise, similarities)

pytestmark = pytest.mark.usefixtures("one_thread")


def rand(*shape, g):
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def theory_matrix(k, g, dtype=torch.float64):
    """Positive rows (row means dominate, as for corpus statistics), one zero row, one negative row."""
    T = torch.rand(k, k, generator=g, dtype=torch.float64) + 0.5
    T[2] = 0.0
    T[5] = -rand(k, g=g) ** 2
    return T.to(dtype)


@pytest.mark.parametrize("block", [None, 1, 3, 8])
def test_representation_family_equals_dense_similarities(block):
    """Family(E, I) on X = E G equals the dense similarities(E @ G) and the slow definitions (float64)."""
    g = torch.Generator().manual_seed(3)
    k, d = 19, 6
    T = theory_matrix(k, g)
    tg = Target.build(T, block=block)
    E = rand(k, d, g=g) + 2.0                              # token means dominate the columns
    fam = Family(E, torch.eye(d, dtype=torch.float64), tg, plain=False)
    G = rand(5, d, d, g=g)
    batch = fam.measure_batch(G, None)
    assert set(batch) == {"cov_cosine", "cka"}
    for i in range(len(G)):
        X = E @ G[i]
        dense = similarities(X, tg)
        one = fam.measure(Factored(G[i], torch.eye(d, dtype=torch.float64)))
        for m, slow in (("cov_cosine", cov_cosine_dense(X, T)), ("cka", cka_dense(X, T))):
            assert float(batch[m][i]) == pytest.approx(dense[m], abs=1e-10)
            assert one[m] == pytest.approx(dense[m], abs=1e-10)
            assert dense[m] == pytest.approx(slow, abs=1e-10)
    # the representation null is this Family on the seeded draws (same generator, same order, chunk by chunk)
    rep = representation_null(E, tg, 7, seed=4, chunk=3)
    g2 = torch.Generator().manual_seed(4)
    draws = torch.cat([rand(n, d, d, g=g2) for n in (3, 3, 1)])
    for m in ("cov_cosine", "cka"):
        explicit = sorted(similarities(E @ draws[i], tg)[m] for i in range(len(draws)))
        assert rep[m].draws.tolist() == pytest.approx(explicit, rel=1e-10, abs=1e-12)


def test_family_identity_right_factor_equals_explicit_identity():
    """measure_batch(M, None) is measure_batch(M, I): the dense null of a token-space family (plain cosine too)."""
    g = torch.Generator().manual_seed(5)
    k, d = 17, 5
    BL, BR = rand(k, d, g=g), rand(k, d, g=g) + 0.5
    fam = Family(BL, BR, Target.build(theory_matrix(k, g), block=4), plain=True)
    M = rand(4, d, d, g=g)
    a = fam.measure_batch(M, None)
    b = fam.measure_batch(M, torch.eye(d, dtype=torch.float64).expand(4, d, d))
    assert set(a) == {"cov_cosine", "cka", "cosine"}
    for m in a:
        torch.testing.assert_close(a[m], b[m], rtol=1e-12, atol=1e-14)
        for i in range(4):
            X = BL @ M[i] @ BR.T
            T = fam.target.T
            slow = {"cov_cosine": cov_cosine_dense(X, T), "cka": cka_dense(X, T), "cosine": fro_cos(X, T, "")}[m]
            assert float(a[m][i]) == pytest.approx(slow, abs=1e-10)
    per, _ = family_null(fam, d, "dense", d, 6, seed=2)
    g2 = torch.Generator().manual_seed(2)
    G = rand(6, d, d, g=g2)
    explicit = sorted(fam.measure(Factored(G[i], torch.eye(d, dtype=torch.float64)))["cosine"] for i in range(6))
    assert per["cosine"].draws.tolist() == pytest.approx(explicit, rel=1e-10, abs=1e-12)


def test_plain_cosine_needs_a_token_space_right_basis():
    g = torch.Generator().manual_seed(6)
    tg = Target.build(theory_matrix(9, g))
    with pytest.raises(LeadTermError, match="B_R has 4 rows, expected k = 9"):
        Family(rand(9, 4, g=g), torch.eye(4, dtype=torch.float64), tg, plain=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("block", [1, 2, 5, 13, 100])
def test_target_blocked_quantities_equal_the_dense_formulas(dtype, block):
    """Every prepared quantity, read a block of rows at a time, equals the dense float64 formula (13 rows)."""
    g = torch.Generator().manual_seed(7)
    k, r = 13, 4
    T = theory_matrix(k, g, dtype)
    tg = Target.build(T, block=block)
    assert tg.T is T and tg.block == block                  # one copy, in the basis dtype
    T64 = T.double()                                         # exact: what the formulas read
    Tn = row_normalise(T64)
    assert float(Tn[2].abs().sum()) == 0.0                   # the zero row stays zero
    torch.testing.assert_close(tg.Tn, Tn, rtol=0, atol=0)
    torch.testing.assert_close(tg.t1, Tn.sum(0), rtol=1e-13, atol=1e-13)
    assert tg.norm == pytest.approx(float(T64.norm()), rel=1e-13)
    c, ck = centre_rows(Tn), centre_cols(Tn)
    assert tg.norm_cov == pytest.approx(float((c @ c.T).norm()), rel=1e-12)
    assert tg.norm_cka == pytest.approx(float((ck @ ck.T).norm()), rel=1e-12)
    L, BR = rand(k, r, g=g), rand(k, 3, g=g)
    torch.testing.assert_close(tg.z(L), Tn.T @ L, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(tg.z(L.float()), Tn.T @ L.float().double(), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(tg.between(L, BR), L.T @ T64 @ BR, rtol=1e-12, atol=1e-12)
    dense = Target.build(T64, block=k)                      # one block: the dense computation
    R = rand(k, r, g=g)
    for X, Xd in ((Factored(L, R.T), L @ R.T), (L, L)):
        a, b = similarities(X, tg), similarities(X, dense)
        for m in a:
            assert a[m] == pytest.approx(b[m], abs=1e-12)
        assert a["cov_cosine"] == pytest.approx(cov_cosine_dense(Xd, T64), abs=1e-12)
        assert a["cka"] == pytest.approx(cka_dense(Xd, T64), abs=1e-12)


class _Float64Sizes(TorchFunctionMode):
    """The largest float64 tensor any torch call returns while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                self.largest = max(self.largest, t.numel())
        return out


def test_target_never_forms_a_float64_k_by_k_matrix():
    """Building a target, Z = Tnᵀ L, B_Lᵀ T B_R and a similarity hold float64 blocks of rows only."""
    g = torch.Generator().manual_seed(8)
    k, block, r = 48, 4, 3
    T, L = theory_matrix(k, g, torch.float32), rand(k, r, g=g)
    with _Float64Sizes() as seen:
        tg = Target.build(T, block=block)
        tg.z(L)
        tg.between(L, L)
        similarities(Factored(L, L.T), tg)
    assert 0 < seen.largest <= block * k < k * k
    with _Float64Sizes() as seen:
        tg.Tn                                                # the on-demand dense copy is seen: the probe works
    assert seen.largest == k * k
