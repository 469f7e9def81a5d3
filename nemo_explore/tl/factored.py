"""A matrix kept as the product of two thin factors, ``A @ B``: attention circuits without the d×d matrix.

An attention head's QK circuit ``W_Q W_Kᵀ`` and OV circuit ``W_V W_O`` are d_model × d_model matrices of rank
d_head. :class:`FactoredMatrix` holds the two factors and computes what is asked of the product from them:
its singular values from two thin QR decompositions and a (d_head × d_head) SVD, its non-zero eigenvalues
from ``B @ A``, its Frobenius norm from the two Gram matrices. Leading axes (heads, blocks) broadcast.
"""

from __future__ import annotations

import torch


class FactoredMatrix:
    """The product ``A @ B`` of ``A`` (..., m, k) and ``B`` (..., k, n), kept as its factors.

    ``AB`` is the product itself (..., m, n); ``BA`` (..., k, k) when m == n; ``T`` the transpose;
    ``svd()``, ``eigenvalues``, ``norm()`` computed from the factors; ``@`` with a tensor or another
    FactoredMatrix stays factored; indexing picks along the leading axes (``qk[3]``: head 3).
    """

    def __init__(self, A: torch.Tensor, B: torch.Tensor) -> None:
        if A.ndim < 2 or B.ndim < 2 or A.shape[-1] != B.shape[-2]:
            raise ValueError(
                f"FactoredMatrix(A, B) needs A (..., m, k) and B (..., k, n); got {tuple(A.shape)} and "
                f"{tuple(B.shape)}"
            )
        lead = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        self.A = A.expand(*lead, *A.shape[-2:])
        self.B = B.expand(*lead, *B.shape[-2:])

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.A.shape[:-1], self.B.shape[-1]))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def inner(self) -> int:
        """k, the factors' shared dimension: the product's rank is at most k."""
        return self.A.shape[-1]

    # TransformerLens' names for the three sizes: the product is ldim × rdim through mdim
    @property
    def ldim(self) -> int:
        """m, the product's rows."""
        return self.A.shape[-2]

    @property
    def rdim(self) -> int:
        """n, the product's columns."""
        return self.B.shape[-1]

    @property
    def mdim(self) -> int:
        """k, the factors' shared dimension (``inner``)."""
        return self.inner

    @property
    def AB(self) -> torch.Tensor:
        return self.A @ self.B

    @property
    def BA(self) -> torch.Tensor:
        if self.A.shape[-2] != self.B.shape[-1]:
            raise ValueError(f"BA needs a square product; this one is {tuple(self.shape[-2:])}")
        return self.B @ self.A

    @property
    def T(self) -> FactoredMatrix:
        return FactoredMatrix(self.B.mT, self.A.mT)

    def svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``U`` (..., m, r), ``S`` (..., r) descending, ``Vh`` (..., r, n) with ``U @ diag(S) @ Vh == AB``;
        r = min(m, k, n)."""
        qa, ra = torch.linalg.qr(self.A)  # A = qa ra
        qb, rb = torch.linalg.qr(self.B.mT)  # Bᵀ = qb rb
        u, s, vh = torch.linalg.svd(ra @ rb.mT, full_matrices=False)
        return qa @ u, s, vh @ qb.mT

    @property
    def U(self) -> torch.Tensor:
        """The left singular vectors (..., m, r) of ``svd()``."""
        return self.svd()[0]

    @property
    def S(self) -> torch.Tensor:
        """The singular values (..., r), descending."""
        return self.svd()[1]

    @property
    def Vh(self) -> torch.Tensor:
        """The right singular vectors, transposed (..., r, n), of ``svd()``."""
        return self.svd()[2]

    def collapse_l(self) -> torch.Tensor:
        """``S[:, None] * Vh`` (..., r, n): the product with its left factor ``U`` taken off (``AB = U @
        collapse_l()``)."""
        _, s, vh = self.svd()
        return s[..., :, None] * vh

    def collapse_r(self) -> torch.Tensor:
        """``U * S`` (..., m, r): the product with its right factor ``Vh`` taken off (``AB = collapse_r() @
        Vh``)."""
        u, s, _ = self.svd()
        return u * s[..., None, :]

    def unsqueeze(self, dim: int = 0) -> FactoredMatrix:
        """A new leading axis at ``dim`` (counted among the leading axes, not the two matrix axes)."""
        lead = self.ndim - 2
        if not -lead - 1 <= dim <= lead:
            raise IndexError(
                f"unsqueeze({dim}): a FactoredMatrix of shape {tuple(self.shape)} has {lead} leading axes"
            )
        dim = dim % (lead + 1)
        return FactoredMatrix(self.A.unsqueeze(dim), self.B.unsqueeze(dim))

    @property
    def pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The factors ``(A, B)``."""
        return self.A, self.B

    @property
    def eigenvalues(self) -> torch.Tensor:
        """The eigenvalues of ``B @ A`` (..., k), complex: the product's non-zero eigenvalues, and zeros.
        A matrix with a NaN (``model.OV``'s rows for blocks without heads) has NaN eigenvalues."""
        BA = self.BA
        finite = torch.isfinite(BA).flatten(-2).all(-1)
        if bool(finite.all()):
            return torch.linalg.eigvals(BA)
        dtype = torch.promote_types(BA.dtype, torch.complex64)
        out = torch.full(BA.shape[:-1], float("nan"), dtype=dtype, device=BA.device)
        if bool(finite.any()):  # LAPACK is never handed a NaN (it crashes the process)
            out[finite] = torch.linalg.eigvals(BA[finite])
        return out

    def norm(self) -> torch.Tensor:
        """Frobenius norm (...,): ``|AB|² = Σ (AᵀA) ∘ (B Bᵀ)``."""
        return ((self.A.mT @ self.A) * (self.B @ self.B.mT)).sum((-2, -1)).clamp_min(0).sqrt()

    def get_corner(self, k: int = 3) -> torch.Tensor:
        """The product's top-left k × k entries, from k rows of A and k columns of B."""
        return self.A[..., :k, :] @ self.B[..., :, :k]

    def __matmul__(self, other) -> FactoredMatrix:
        if isinstance(other, FactoredMatrix):
            return FactoredMatrix(self.A, (self.B @ other.A) @ other.B)
        if isinstance(other, torch.Tensor):
            return FactoredMatrix(self.A, self.B @ other)
        return NotImplemented

    def __rmatmul__(self, other) -> FactoredMatrix:
        if isinstance(other, torch.Tensor):
            return FactoredMatrix(other @ self.A, self.B)
        return NotImplemented

    def __getitem__(self, index) -> FactoredMatrix:
        index = index if isinstance(index, tuple) else (index,)
        lead = self.ndim - 2
        if len(index) > lead or any(i is Ellipsis or i is None for i in index):
            raise IndexError(
                f"a FactoredMatrix of shape {tuple(self.shape)} is indexed along its {lead} leading axes "
                "only (use .AB for entries of the product, .get_corner() for a corner)"
            )
        return FactoredMatrix(self.A[index], self.B[index])

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"FactoredMatrix(shape={tuple(self.shape)}, inner={self.inner})"
