"""Labels: how results are named in every printed line, table, figure, report and profile, derived here, in
one place, from the columns the store keeps (``scope``, ``variant``, ``model``, ``width``, ``impl``,
``options`` and the timm-style settings). Nothing writes a label into a column, and nothing parses one.

Plain pandas, no torch: reports load none.
"""

from __future__ import annotations

import pandas as pd

from attnbench.choices import Scope


def subject(scope: str, variant: str, model: str, width: float = 1.0) -> str:
    """What ran: the variant at module scope, the network at model scope (with its channel multiplier where it
    is not 1: ``gsa_probe x0.875``)."""
    if scope != Scope.MODEL:
        return variant
    return model + (f" x{width:g}" if width not in (None, 1, 1.0) and not pd.isna(width) else "")


def setup(amp: str, channels_last: bool, compile: str) -> str:
    """The timm-style settings of a case: 'amp=bf16,channels_last,compile=default' ('' for none)."""
    return ",".join(part for part in (f"amp={amp}" if amp else "", "channels_last" if channels_last else "",
                                      f"compile={compile}" if compile else "") if part)


def subjects(rows: pd.DataFrame) -> pd.Series:
    """:func:`subject` of every row."""
    width = rows.width if "width" in rows else pd.Series(1.0, index=rows.index)
    return pd.Series([subject(*r) for r in zip(rows.scope, rows.variant.fillna(""), rows.model.fillna(""), width)],
                     index=rows.index, dtype=object)


def setups(rows: pd.DataFrame) -> pd.Series:
    """:func:`setup` of every row."""
    return pd.Series([setup(*r) for r in zip(rows.amp.fillna(""), rows.channels_last.fillna(0).astype(bool),
                                             rows.compile.fillna(""))], index=rows.index, dtype=object)


def series(rows: pd.DataFrame) -> pd.Series:
    """Each row's series: what ran; its implementation where it varies among ``rows`` for the same subject
    (``gsa/batched``); its variant options and settings where it has any (``[span=15]``, ``[channels_last]``),
    and their absence where the same subject also ran with some (``[defaults]``, ``[eager]``): one series per
    combination that was measured."""
    if rows.empty:
        return pd.Series([], index=rows.index, dtype=object)
    what = subjects(rows)
    impl, options, settings = rows.impl.fillna(""), rows.options.fillna(""), setups(rows)

    def varies(values: pd.Series) -> pd.Series:
        return values.groupby(what).transform("nunique") > 1

    label = what.where(~varies(impl), what + "/" + impl)
    label = label.where((options == "") & ~varies(options), label + "[" + options.replace("", "defaults") + "]")
    return label.where((settings == "") & ~varies(settings), label + "[" + settings.replace("", "eager") + "]")


def hues(rows: pd.DataFrame) -> pd.Series:
    """What gives a row its colour: its variant, or for a network from elsewhere (no variant) its name."""
    return rows.variant.fillna("").where(rows.variant.fillna("") != "", rows.model.fillna(""))
