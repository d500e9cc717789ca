"""Published figures (``published.csv`` beside this module) beside the counts of our networks, and the facts
of our variants that a report prints.

Both are computed once and shipped as the package's data files (``ours.csv``, ``variants.csv``;
``python -m attnbench.baselines`` writes them), so that a report only reads and loads no torch, from a
checkout or an installed wheel alike; a test recomputes them live and fails when a file is stale.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import pandas as pd

DATA = Path(str(resources.files(__name__)))  # the package's data files (package-data in pyproject.toml)
PUBLISHED, OURS, VARIANTS = DATA / "published.csv", DATA / "ours.csv", DATA / "variants.csv"


def count_variant_facts(*, builtin: bool | None = None) -> pd.DataFrame:
    """Every registered variant (``builtin``: the shipped ones only), in registry order: name, paper and the
    expected exponent k of its cost against pixels (``scaling_low``-``scaling_high`` over its options)."""
    from attnbench.registry import iter_specs

    return pd.DataFrame([{"name": s.name, "paper": s.paper, "arxiv": s.arxiv, "scaling_low": s.scaling[0],
                          "scaling_high": s.scaling[1]} for s in iter_specs(builtin=builtin)])


def variant_facts(names: Iterable[str] = ()) -> pd.DataFrame:
    """:func:`count_variant_facts` as shipped, or from the registry when one of ``names`` is not in the
    shipped file (a variant added since, or a plugin's)."""
    if VARIANTS.exists():
        shipped = pd.read_csv(VARIANTS, dtype={"arxiv": str})
        if set(names) <= set(shipped.name):
            return shipped
    return count_variant_facts()


def load_published(path: str | Path = PUBLISHED) -> pd.DataFrame:
    """The published figures, one row per (model, metric, source), values in params or MACs."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "no published figures there", str(path))
    return pd.read_csv(path)


def ours(model: str, metric: str, res: int) -> int:
    """Our parameter count or MACs (batch 1, ``res`` x ``res``) of a network."""
    import torch

    from attnbench.measure.macs import count_macs
    from attnbench.measure.params import count_params
    from attnbench.models import build_model

    net = build_model(model, image_size=res)
    if metric == "params":
        return count_params(net)["params"]
    return count_macs(net, torch.randn(1, 3, res, res))


def countable(model: str) -> bool:
    """Whether a published row's network can be built here: one of ours, or timm's where timm imports (a row
    that names no network of ours, ``unmatched``, cannot)."""
    from attnbench.models import UnknownModelError, get_model_spec, list_models

    if model in list_models():
        return True
    try:
        return model.startswith("timm:") and get_model_spec(model) is not None
    except UnknownModelError:
        return False


def count_ours(path: str | Path = PUBLISHED) -> pd.DataFrame:
    """Our figure for every (model, metric, res) that a published row names and that can be built here (timm's
    networks only where timm imports), counted now."""
    keys = load_published(path)[["model", "metric", "res"]].drop_duplicates()
    keys = keys[[countable(m) for m in keys.model]].reset_index(drop=True)
    return keys.assign(ours=[ours(r.model, r.metric, int(r.res)) for r in keys.itertuples()])


def compare_published(path: str | Path = PUBLISHED, *, live: bool = False) -> pd.DataFrame:
    """Each published row that names one of our networks, with our figure and the difference.

    Our figures are read from ``ours.csv``, or counted now with ``live``. Columns added:
    ``ours``, ``diff`` (ours - published), ``diff_pct`` and ``within`` (|diff| <= ``abs_tol``). Rows
    marked ``unmatched`` (no network of ours corresponds) keep NaN.
    """
    table = load_published(path)
    counts = count_ours(path) if live else pd.read_csv(OURS)
    table = table.merge(counts, on=["model", "metric", "res"], how="left")
    table["diff"] = table["ours"] - table["value"]
    table["diff_pct"] = 100 * table["diff"] / table["value"]
    table["within"] = table["diff"].abs() <= table["abs_tol"]
    return table



def write_shipped() -> None:
    """Count ours now and write ``ours.csv`` and ``variants.csv`` (``python -m attnbench.baselines``); rows
    that cannot be counted here (timm's, without timm) keep their shipped figure."""
    from attnbench import files

    counted = count_ours()
    if OURS.exists():
        shipped = pd.read_csv(OURS)
        kept = shipped.merge(counted[["model", "metric", "res"]], how="left", indicator=True)
        counted = pd.concat([counted, kept[kept._merge == "left_only"].drop(columns="_merge")], ignore_index=True)
        keys = load_published()[["model", "metric", "res"]].drop_duplicates()
        counted = keys.merge(counted, on=["model", "metric", "res"])  # the published order
    files.write_text(OURS, counted.to_csv(index=False))
    files.write_text(VARIANTS, count_variant_facts(builtin=True).to_csv(index=False))
    print(f"wrote {OURS} and {VARIANTS}")
