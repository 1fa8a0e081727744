"""Vector conditioning: covariates (time to target, age, sex, diagnosis, APOE4, MMSE...) to embeddings.

Each covariate becomes one embedding *token*:

* continuous: ``z = (x - mean) / std`` through a small MLP (1 -> d -> d);
* categorical: a learned embedding table, one row per category;
* missing (``None`` / NaN) or hidden by condition dropout: the covariate's own learned **null**
  embedding.

"All covariates null" is the unconditional model of classifier-free guidance. The null path and
the value path are combined with ``torch.where`` so that every parameter is part of every graph
(distributed training needs no ``find_unused_parameters``).

Values travel through the model as a float tensor of shape ``(B, n_covariates)``: continuous values
raw (not normalised), categorical values as category indices, NaN for missing.
:meth:`CovariateEncoder.tabulate` builds it from mappings such as ``{"age": 71.0, "sex": "F",
"mmse": None}``.

Example:
    >>> import torch
    >>> from neurocast.backbone.config import CovariateSpec, _category_key
    >>> from neurocast.backbone.conditioning import CovariateEncoder
    >>> enc = CovariateEncoder([CovariateSpec.continuous("age", 70, 8),
    ...                         CovariateSpec.categorical("sex", ["F", "M"])], dim=16)
    >>> values = enc.tabulate([{"age": 71.0, "sex": "F"}, {"age": None, "sex": "M"}])
    >>> values
    tensor([[71.,  0.],
            [nan,  1.]])
    >>> enc(values).shape  # (batch, tokens, dim)
    torch.Size([2, 2, 16])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from neurocast.backbone.config import CovariateSpec, _category_key

CovariateValues = torch.Tensor | Mapping[str, Any] | Sequence[Mapping[str, Any]] | None
"""What the model accepts as covariates: an encoded ``(B, n)`` tensor, one mapping (name -> value,
or name -> sequence of B values) or a sequence of B mappings; ``None`` means all missing."""


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float | np.floating) and math.isnan(value):
        return True
    if isinstance(value, str) and value.strip().lower() in ("", "n/a", "nan", "na", "none"):
        return True
    return False


class CovariateEncoder(nn.Module):
    """Embeds the covariates of a batch as tokens ``(B, n_covariates, dim)``, with a null per covariate.

    Args:
        specs: one :class:`CovariateSpec` per covariate, in order.
        dim: width of each token.
    """

    def __init__(self, specs: Sequence[CovariateSpec], dim: int) -> None:
        super().__init__()
        self.specs = tuple(specs)
        self.dim = int(dim)
        self.value_nets = nn.ModuleDict()
        for spec in self.specs:
            if spec.kind == "continuous":
                self.value_nets[spec.name] = nn.Sequential(
                    nn.Linear(1, dim), nn.SiLU(), nn.Linear(dim, dim)
                )
            else:
                self.value_nets[spec.name] = nn.Embedding(len(spec.categories), dim)
        # one learned null embedding per covariate (row i = covariate i)
        self.null = nn.Parameter(torch.randn(len(self.specs), dim) * 0.02)
        self.register_buffer(
            "_mean",
            torch.tensor([s.mean for s in self.specs], dtype=torch.float32),
            persistent=False,
        )
        self.register_buffer(
            "_std", torch.tensor([s.std for s in self.specs], dtype=torch.float32), persistent=False
        )

    @property
    def names(self) -> tuple[str, ...]:
        """Covariate names, in encoding order."""
        return tuple(s.name for s in self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    # ------------------------------------------------------------------ values
    def tabulate(self, covariates: CovariateValues, batch_size: int | None = None) -> torch.Tensor:
        """Encode covariate values as a float tensor ``(B, n)`` (category indices; NaN = missing).

        ``covariates`` may be an already encoded tensor (returned as float32, shape checked), one
        mapping of scalars (broadcast to ``batch_size``), one mapping of per-sample sequences, a
        sequence of mappings, or ``None`` (all missing). Unknown names raise ``ValueError`` (a typo
        must not silently become "missing"); names absent from a mapping are missing.
        """
        n = len(self.specs)
        if isinstance(covariates, torch.Tensor):
            t = covariates.detach().to(torch.float32)
            if t.ndim == 1:
                t = t.unsqueeze(0)
            if t.ndim != 2 or t.shape[1] != n:
                raise ValueError(
                    f"encoded covariates must have shape (B, {n}), got {tuple(t.shape)}"
                )
            if batch_size is not None and t.shape[0] == 1 and batch_size > 1:
                t = t.expand(batch_size, n)
            return t.contiguous()
        if covariates is None:
            return torch.full((batch_size or 1, n), float("nan"))
        rows: list[Mapping[str, Any]]
        if isinstance(covariates, Mapping):
            lengths = {
                len(v)
                for v in covariates.values()
                if not isinstance(v, str) and hasattr(v, "__len__") and not _is_scalar_array(v)
            }
            if len(lengths) > 1:
                raise ValueError(f"covariate columns have different lengths: {sorted(lengths)}")
            if lengths:
                m = lengths.pop()
                rows = [
                    {
                        k: (
                            v
                            if isinstance(v, str)
                            or _is_scalar_array(v)
                            or not hasattr(v, "__len__")
                            else v[i]
                        )
                        for k, v in covariates.items()
                    }
                    for i in range(m)
                ]
            else:
                rows = [covariates] * (batch_size or 1)
        else:
            rows = list(covariates)
        unknown = {k for r in rows for k in r} - set(self.names)
        if unknown:
            raise ValueError(
                f"unknown covariate(s) {sorted(unknown)}; the model knows {list(self.names)}"
            )
        out = torch.full((len(rows), n), float("nan"))
        for i, row in enumerate(rows):
            for j, spec in enumerate(self.specs):
                value = row.get(spec.name)
                if _is_missing(value):
                    continue
                if spec.kind == "continuous":
                    try:
                        out[i, j] = float(value)
                    except (TypeError, ValueError) as exc:
                        raise ValueError(
                            f"covariate {spec.name!r}: {value!r} is not a number"
                        ) from exc
                else:
                    out[i, j] = float(spec.index_of(value))
        if batch_size is not None and out.shape[0] == 1 and batch_size > 1:
            out = out.expand(batch_size, n).contiguous()
        return out

    # ------------------------------------------------------------------ embed
    def forward(self, values: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens ``(B, n, dim)`` for encoded ``values`` ``(B, n)``.

        Entries that are NaN, or where the boolean mask ``drop`` ``(B, n)`` is True, get the null
        embedding of their covariate.
        """
        values = values.to(device=self.null.device, dtype=torch.float32)
        null_mask = torch.isnan(values)
        if drop is not None:
            null_mask = null_mask | drop.to(device=values.device, dtype=torch.bool)
        filled = torch.where(null_mask, torch.zeros_like(values), values)
        tokens = []
        for j, spec in enumerate(self.specs):
            net = self.value_nets[spec.name]
            if spec.kind == "continuous":
                z = (filled[:, j : j + 1] - self._mean[j]) / self._std[j]
                tok = net(z)
            else:
                idx = filled[:, j].round().long()
                if bool(((idx < 0) | (idx >= len(spec.categories))).any()):
                    raise ValueError(
                        f"covariate {spec.name!r}: category index out of range "
                        f"[0, {len(spec.categories) - 1}]"
                    )
                tok = net(idx)
            tok = torch.where(null_mask[:, j : j + 1], self.null[j].expand_as(tok), tok)
            tokens.append(tok)
        return torch.stack(tokens, dim=1)

    def null_values(self, batch_size: int) -> torch.Tensor:
        """Encoded values with every covariate missing: the unconditional input."""
        return torch.full((batch_size, len(self.specs)), float("nan"), device=self.null.device)

    def sample_drop_mask(
        self,
        batch_size: int,
        drop_prob: float,
        drop_all_prob: float,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Boolean ``(B, n)`` condition-dropout mask for training.

        Each covariate is hidden with its own ``drop_prob`` (``spec.drop_prob`` or the default
        given), and all covariates of a sample together with ``drop_all_prob``; the effective
        null rate of covariate ``j`` is ``1 - (1 - p_j) * (1 - drop_all_prob)``.
        """
        n = len(self.specs)
        dev = (
            device if device is not None else (generator.device if generator is not None else "cpu")
        )
        p = torch.tensor(
            [s.drop_prob if s.drop_prob is not None else drop_prob for s in self.specs],
            dtype=torch.float32,
            device=dev,
        )
        u = torch.rand((batch_size, n + 1), generator=generator, device=dev)
        each = u[:, :n] < p
        every = (u[:, n:] < drop_all_prob).expand(batch_size, n)
        return each | every

    def encoding(self) -> list[dict[str, Any]]:
        """The covariate encoding as JSON (names, kinds, means/stds, categories) for model cards."""
        out = []
        for s in self.specs:
            if s.kind == "continuous":
                out.append({"name": s.name, "kind": s.kind, "mean": s.mean, "std": s.std})
            else:
                out.append(
                    {
                        "name": s.name,
                        "kind": s.kind,
                        "categories": list(s.categories),
                        "index": {str(c): i for i, c in enumerate(s.categories)},
                    }
                )
        return out


def _is_scalar_array(v: Any) -> bool:
    return hasattr(v, "ndim") and getattr(v, "ndim", 1) == 0


def fit_covariates(
    columns: Mapping[str, Sequence[Any]],
    continuous: Sequence[str] = (),
    categorical: Sequence[str] = (),
    drop_prob: Mapping[str, float] | None = None,
) -> tuple[CovariateSpec, ...]:
    """Covariate specs fitted on training data: means/stds of continuous columns, sorted categories.

    ``columns`` maps a name to its values (a dict of lists, or a pandas DataFrame); missing values
    (None / NaN / "n/a") are ignored. A constant continuous column gets ``std = 1``.

    Example:
        >>> specs = fit_covariates({"age": [60, 70, None], "sex": ["F", "M", "F"]},
        ...                        continuous=["age"], categorical=["sex"])
        >>> specs[0].mean, specs[0].std, specs[1].categories
        (65.0, 5.0, ('F', 'M'))
    """
    drop_prob = dict(drop_prob or {})
    specs: list[CovariateSpec] = []
    for name in continuous:
        vals = [float(v) for v in list(columns[name]) if not _is_missing(v)]
        if not vals:
            raise ValueError(f"covariate {name!r}: no values to fit")
        arr = np.asarray(vals, dtype=np.float64)
        std = float(arr.std())
        specs.append(
            CovariateSpec.continuous(
                name, float(arr.mean()), std if std > 0 else 1.0, drop_prob.get(name)
            )
        )
    for name in categorical:
        vals = [v for v in list(columns[name]) if not _is_missing(v)]
        if not vals:
            raise ValueError(f"covariate {name!r}: no values to fit")
        seen: dict[str, Any] = {}
        for v in vals:
            v = v.item() if hasattr(v, "item") else v
            seen.setdefault(_category_key(v), v)
        cats = tuple(seen[k] for k in sorted(seen))
        specs.append(CovariateSpec.categorical(name, cats, drop_prob.get(name)))
    return tuple(specs)
