"""Direct, slow reference formulas (dense one-hot, explicit softmax Jacobian), straight from THEORY.md.

Used by the tests and the benchmark as the thing the fast engine must agree with.
"""

from __future__ import annotations

import torch

#: the small Markov corpus of the exactness tests: |V| = 12 tokens, windows of T = 9, N = 40 windows
V, T, N = 12, 9, 40


def fro_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frobenius cosine <a, b> / (|a| |b|), written out (the tests' yardstick)."""
    return float((a * b).sum() / (a.norm() * b.norm()))


def direct_basis(tokens: torch.Tensor, lengths: torch.Tensor, V: int, dtype=torch.float64):
    """Full-vocabulary B̄, Φ̄, ΣB̄, M, Ḡ, Q̄, p̄ by the textbook formulas."""
    N, T1 = tokens.shape
    T = T1 - 1
    B = torch.zeros(V, V, dtype=dtype)
    Phi = torch.zeros(V, V, dtype=dtype)
    n = 0
    eye = torch.eye(V, dtype=dtype)
    for i in range(N):
        L = int(lengths[i]) - 1
        X = eye[tokens[i, :L]]
        Y = eye[tokens[i, 1:L + 1]]
        R = Y - 1.0 / V
        A = torch.tril(torch.ones(L, L, dtype=dtype)) / torch.arange(1, L + 1, dtype=dtype)[:, None]
        Cc = A @ X
        B += X.T @ R
        Phi += R.T @ Cc
        n += L
    B /= n
    Phi /= n
    Sigma = B.T @ B
    M = (B @ Phi).T
    G = M @ B
    Q = torch.zeros(V, V, dtype=dtype)
    p = torch.zeros(T, dtype=dtype)
    for i in range(N):
        L = int(lengths[i]) - 1
        X = eye[tokens[i, :L]]
        R = eye[tokens[i, 1:L + 1]] - 1.0 / V
        for t in range(L):
            a = torch.full((t + 1,), 1.0 / (t + 1), dtype=dtype)
            J = torch.diag(a) - torch.outer(a, a)          # softmax Jacobian at uniform attention
            m = X[: t + 1] @ G @ R[t]
            g = J @ m
            Q += torch.outer(X[t], g @ X[: t + 1])
            for k in range(t + 1):
                p[t - k] += g[k]
    Q /= n
    p /= n
    return dict(bigram=B, context=Phi, interchange=Sigma, value=M, value_output=G, key_query=Q, position=p)


def markov_tokens(V: int, T: int, N: int, seed: int = 0) -> torch.Tensor:
    """A random Markov-chain corpus with structure (sparse, peaked transitions)."""
    g = torch.Generator().manual_seed(seed)
    trans = torch.rand(V, V, generator=g) ** 6
    trans = trans / trans.sum(1, keepdim=True)
    toks = torch.zeros(N, T + 1, dtype=torch.long)
    toks[:, 0] = torch.randint(0, V, (N,), generator=g)
    for t in range(1, T + 1):
        toks[:, t] = torch.multinomial(trans[toks[:, t - 1]], 1, generator=g)[:, 0]
    return toks
