"""Published figures (``baselines/published.csv``) beside the counts of our networks."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

PUBLISHED = Path(__file__).resolve().parent.parent / "baselines" / "published.csv"


def load_published(path: str | Path = PUBLISHED) -> pd.DataFrame:
    """The published figures, one row per (model, metric, source), values in params or MACs."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No published figures at {path}; they live in the baselines/ folder of a checkout.")
    return pd.read_csv(path)


def ours(model: str, metric: str, res: int) -> int:
    """Our parameter count or MACs (batch 1, ``res`` x ``res``) of a network."""
    from attnbench.measure.macs import count_macs
    from attnbench.measure.params import count_params
    from attnbench.models import build_model

    net = build_model(model, image_size=res)
    if metric == "params":
        return count_params(net)["params"]
    return count_macs(net, torch.randn(1, 3, res, res))


def compare_published(path: str | Path = PUBLISHED) -> pd.DataFrame:
    """Each published row that names one of our networks, with our figure and the difference.

    Columns added: ``ours``, ``diff`` (ours - published), ``diff_pct`` and ``within`` (|diff| <=
    ``abs_tol``). Rows marked ``unmatched`` (no network of ours corresponds) keep NaN.
    """
    from attnbench.models import list_models

    table = load_published(path)
    cache: dict[tuple[str, str, int], int] = {}
    values = []
    for r in table.itertuples():
        if r.model not in list_models():
            values.append(float("nan"))
            continue
        key = (r.model, r.metric, int(r.res))
        if key not in cache:
            cache[key] = ours(*key)
        values.append(cache[key])
    table["ours"] = values
    table["diff"] = table["ours"] - table["value"]
    table["diff_pct"] = 100 * table["diff"] / table["value"]
    table["within"] = table["diff"].abs() <= table["abs_tol"]
    return table
