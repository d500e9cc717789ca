"""Published figures (``baselines/published.csv``) beside the counts of our networks.

Our counts are computed once and shipped in ``baselines/ours.csv`` (``python -m attnbench.baselines``
writes it), so that a report only reads; a test recounts them live and fails when the file is stale.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

PUBLISHED = Path(__file__).resolve().parent.parent / "baselines" / "published.csv"
OURS = PUBLISHED.with_name("ours.csv")


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


def count_ours(path: str | Path = PUBLISHED) -> pd.DataFrame:
    """Our figure for every (model, metric, res) that a published row names, counted now."""
    from attnbench.models import list_models

    keys = load_published(path)[["model", "metric", "res"]].drop_duplicates()
    keys = keys[keys.model.isin(list_models())].reset_index(drop=True)
    return keys.assign(ours=[ours(r.model, r.metric, int(r.res)) for r in keys.itertuples()])


def compare_published(path: str | Path = PUBLISHED, *, live: bool = False) -> pd.DataFrame:
    """Each published row that names one of our networks, with our figure and the difference.

    Our figures are read from ``baselines/ours.csv``, or counted now with ``live``. Columns added:
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


if __name__ == "__main__":
    count_ours().to_csv(OURS, index=False)
    print(f"wrote {OURS}")
