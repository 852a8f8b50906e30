"""Model explanations in plain words: per-customer reasons and a SHAP-style summary chart.

Works on any additive contributions (LightGBM ``pred_contrib``, SHAP values) of any model — churn, CLV — given as
a DataFrame with one column per feature and optionally ``base_value``. ``values`` holds the customers' feature
values under the same column names (``ChurnModel.feature_values``) so reasons quote "Yes" or "Pro", not codes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from c360.training.uplift import to_outcome

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BASE = "base_value"


def top_k(contributions: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the column indices of the k largest |contributions|, strongest first, and those contributions.

    Index -1 marks a slot without a reason (a contribution of exactly 0: the feature did not move the score)."""
    n, width = contributions.shape
    k = min(k, width)
    if k == 0:
        return np.full((n, 0), -1), np.zeros((n, 0))
    size = np.abs(contributions)
    part = np.argpartition(-size, k - 1, axis=1)[:, :k] if k < width else np.tile(np.arange(width), (n, 1))
    order = np.argsort(-np.take_along_axis(size, part, axis=1), axis=1, kind="stable")
    index = np.take_along_axis(part, order, axis=1)
    chosen = np.take_along_axis(contributions, index, axis=1)
    index = np.where((chosen == 0) | np.isnan(chosen), -1, index)
    return index, np.where(index < 0, 0.0, chosen)


def feature_descriptions() -> dict[str, str]:
    """Plain-words description of every c360 feature (``c360.core.definitions.FEATURES``), by feature name."""
    from c360.core.definitions import FEATURES

    return {f.name: f.description for f in FEATURES}


def label(feature: str, descriptions: Mapping[str, str] | None = None) -> str:
    """The feature's description, else its column name with underscores as spaces."""
    described = (descriptions or {}).get(feature)
    return described or " ".join(feature.replace("_", " ").split())


def _plain(value: Any) -> Any:
    """JSON-friendly scalar: numpy scalars unwrapped, missing as None, moments as ISO text."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, datetime | date | pd.Timestamp):
        return value.isoformat()
    return value


def format_value(value: Any) -> str:
    """A value as a person would write it: 2, 0.35, 1,234.5, yes, missing."""
    value = _plain(value)
    if value is None:
        return "missing"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return f"{int(value):,}"
    if isinstance(value, float):
        text = f"{value:,.2f}" if abs(value) >= 1 else f"{value:.2g}"
        return text.rstrip("0").rstrip(".") if "." in text and "e" not in text else text
    return str(value)


def _features(contributions: pd.DataFrame) -> list[str]:
    return [str(c) for c in contributions.columns if c != BASE]


def reasons(
    contributions: pd.DataFrame,
    values: pd.DataFrame,
    descriptions: Mapping[str, str] | None = None,
    k: int = 3,
    outcome: str = "churn risk",
) -> list[list[dict[str, Any]]]:
    """Per row, the ``k`` features that move the prediction most (largest |contribution|), strongest first.

    Each reason: ``{"feature", "value", "contribution", "direction": "raises"/"lowers", "text"}``, the text e.g.
    "days with product activity in the last 30 days: 2 — raises churn risk" (``outcome`` names what moves, e.g.
    "expected value" for CLV). Features that do not move the prediction at all are never reasons. Rows of
    ``contributions`` and ``values`` pair by position; a feature absent from ``values`` has value None.
    """
    if len(contributions) != len(values):
        raise ValueError("contributions and values must have the same number of rows")
    features = _features(contributions)
    matrix = contributions[features].to_numpy(dtype="float64")
    top = np.argsort(-np.abs(matrix), axis=1, kind="stable")[:, :k]
    known = [f if f in values.columns else None for f in features]
    out = []
    for row, order in enumerate(top):
        row_reasons = []
        for j in order:
            contribution = float(matrix[row, j])
            if contribution == 0.0 or math.isnan(contribution):
                continue
            column = known[j]
            value = values[column].iat[row] if column is not None else None
            row_reasons.append(_reason(features[j], value, contribution, descriptions, outcome))
        out.append(row_reasons)
    return out


def _reason(
    feature: str, value: Any, contribution: float, descriptions: Mapping[str, str] | None, outcome: str
) -> dict[str, Any]:
    direction = "raises" if contribution > 0 else "lowers"
    return {
        "feature": feature,
        "value": _plain(value),
        "contribution": contribution,
        "direction": direction,
        "text": f"{label(feature, descriptions)}: {format_value(value)} — {direction} {outcome}",
    }


# ---------------------------------------------------------------- summary chart


def _as_numbers(s: pd.Series) -> pd.Series:
    """Numbers for colouring: Yes/No and booleans as 1/0, numeric text parsed; categories stay NaN (grey)."""
    try:
        return to_outcome(s.reset_index(drop=True))
    except (ValueError, TypeError):
        return pd.to_numeric(s.reset_index(drop=True), errors="coerce").astype("float64")


def _colour_scale(s: pd.Series) -> np.ndarray:
    """Percentile rank in [0, 1] (robust to outliers, like SHAP's clipped colour scale); NaN where unknown."""
    numbers = _as_numbers(s)
    return np.asarray(numbers.rank(pct=True, method="average"), dtype="float64")


def shap_summary_figure(
    contributions: pd.DataFrame,
    values: pd.DataFrame,
    max_features: int = 12,
    descriptions: Mapping[str, str] | None = None,
    max_points: int = 5000,
    title: str = "Feature contributions",
    seed: int = 0,
) -> Figure:
    """SHAP-style beeswarm: one row per feature (largest mean |contribution| on top), one dot per customer.

    A dot's x is the feature's contribution to that customer's score, its colour the feature's value from low
    (blue) to high (red); grey where the value is missing or not a number. Up to ``max_points`` customers, drawn
    at random.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    features = _features(contributions)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(contributions), min(max_points, len(contributions)), replace=False))
    matrix = contributions[features].to_numpy(dtype="float64")[rows]
    ranked = np.argsort(-np.abs(matrix).mean(axis=0), kind="stable")[:max_features]
    cmap = colormaps["coolwarm"]

    fig = Figure(figsize=(8, 0.45 * len(ranked) + 1.5))
    ax = fig.subplots()
    for position, j in enumerate(ranked[::-1]):
        x = matrix[:, j]
        name = features[j]
        colour = _colour_scale(values[name].iloc[rows]) if name in values.columns else np.full(len(rows), np.nan)
        jitter = _jitter(x, rng)
        known = ~np.isnan(colour)
        ax.scatter(x[~known], position + jitter[~known], s=6, color="#999999", alpha=0.6, linewidths=0)
        ax.scatter(x[known], position + jitter[known], s=6, c=cmap(colour[known]), alpha=0.8, linewidths=0)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_yticks(range(len(ranked)), [label(features[j], descriptions) for j in ranked[::-1]], fontsize=8)
    ax.set_xlabel("contribution to the score (log-odds for classifiers)")
    ax.set_title(title)
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), ax=ax, ticks=[0, 1], fraction=0.03, pad=0.02)
    bar.ax.set_yticklabels(["low", "high"])
    bar.set_label("feature value")
    fig.tight_layout()
    return fig


def _jitter(x: np.ndarray, rng: np.random.Generator, width: float = 0.35) -> np.ndarray:
    """Vertical spread growing with how crowded a dot's neighbourhood is, so dense regions look wide."""
    if len(x) == 0:
        return np.zeros(0)
    counts, edges = np.histogram(x, bins=50)
    density = counts[np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(counts) - 1)] / max(counts.max(), 1)
    return rng.uniform(-1, 1, len(x)) * width * np.sqrt(density)
