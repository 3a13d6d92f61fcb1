"""The linear span of data rows, and projection onto it: what a direction means on the data actually seen."""

import torch
from jaxtyping import Float
from torch import Tensor

_CHUNK = 8192  # rows per QR step: memory stays O((d + _CHUNK) d) whatever the number of rows


def _check_rows(name: str, x: Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; pass a 2-D [n, d] tensor (flatten leading dims first)")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} has shape {tuple(x.shape)}: empty; pass at least one row of at least one dimension")


def row_factor(x: Float[Tensor, "n d"]) -> Float[Tensor, "r d"]:
    """R (float64, r = min(n, d) rows) with R^T R = x^T x: same row span and singular values as x, built chunk by chunk."""
    _check_rows("row_factor: x", x)
    r = None
    for chunk in x.split(max(_CHUNK, x.shape[1])):
        block = chunk.double() if r is None else torch.cat([r, chunk.double()])
        r = torch.linalg.qr(block, mode="r")[1]
    return r


def data_span(x: Float[Tensor, "n d"], rel_tol: float = 1e-4) -> Float[Tensor, "k d"]:
    """Orthonormal rows spanning the rows of x (uncentred): right singular vectors with sigma > rel_tol x sigma_max."""
    _check_rows("data_span: x", x)
    if not 0 < rel_tol < 1:
        raise ValueError(f"data_span: rel_tol={rel_tol} must be in (0, 1); 1e-4 keeps all but round-off directions")
    _, s, vh = torch.linalg.svd(row_factor(x), full_matrices=False)  # float64 SVD of a matrix with x's spectrum
    keep = s > rel_tol * s[0] if s[0] > 0 else torch.zeros_like(s, dtype=torch.bool)  # all-zero x spans nothing
    return vh[keep].to(torch.promote_types(x.dtype, torch.float32))


def project_onto(rows: Float[Tensor, "n d"], basis: Float[Tensor, "k d_basis"]) -> Float[Tensor, "n d"]:
    """Orthogonal projection of each row onto the span of `basis` (orthonormal rows, e.g. from data_span)."""
    if rows.dim() != 2 or basis.dim() != 2 or rows.shape[1] != basis.shape[1]:
        raise ValueError(
            f"project_onto: rows {tuple(rows.shape)} and basis {tuple(basis.shape)} must be [n, d] and "
            f"[k, d] with the same d; build the basis from data of the rows' dimension"
        )
    b = basis.double()
    return ((rows.double() @ b.T) @ b).to(rows.dtype)
