"""Churn, CLV, next best action and expansion with their top reasons, for many customers at once (plain, vectorised
functions).

The batch job (`serving.batch`) calls these on chunks of 100,000 customers, the service on one row: same code,
same numbers. Reasons are LightGBM's `pred_contrib` (exact tree SHAP values, no `shap` import); the top `k`
features by |contribution| are picked with `numpy.argpartition`, and their values are turned into text with Arrow
kernels — no Python loop over rows anywhere.

No tree is walked more often than the output needs: churn's and CLV's contributions sum to their raw scores, so
the score comes from them rather than from a second `predict`; the next best action's arms are predicted, and only
the explained arm (and the control) explained, on its rows; an arm whose calibration found no signal in its
predicted uplift (slope 0: its uplift is its average effect) runs no tree at all. A batch runs LightGBM on every
core the process may use (`threads`), a request on one.

What each model scores (`ModelScores.score`):

* churn — the calibrated probability of churning within 90 days (`training.labels.CHURN_HORIZON_DAYS`), in a risk
  band (`CHURN_BANDS`); reasons explain the log-odds (Platt calibration keeps their signs and order).
* clv — expected net revenue in the next 12 months, with an 80 % range from the Tweedie variance of the model
  (`clv_range`); reasons explain the log of the value (the model's link).
* expansion — the calibrated probability of expanding (plan upgrade, seat increase or add-on order) within 90
  days; reasons explain its log-odds, as churn's.
* response — the calibrated probability that a campaign message is clicked or answered within 14 days, for the
  customer's best channel and content topic (every pair scored in one batch); reasons explain the best pair's
  log-odds.
* nba — the expected net uplift (dollars over 91 days, after the action's cost) of the recommended action over no
  action; 0 when no action pays. Reasons explain the uplift of the recommended action — or, when it is no action,
  of the best alternative (why it does not pay) — as the difference of the two T-learner arms' contributions,
  times the uplift calibration slope and the customer's MRR. The action is chosen among those the customer's
  consent allows (`c360.core.consent`: an opt-out of the purpose an action needs withholds it, when the frame holds
  the opt-out columns); the better actions withheld are kept (`nba_withheld`) and shown with why
  (`not_proposed`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from c360.core import consent
from c360.training.explain import top_k

K = 3
# Probability thresholds of the churn risk bands (90 days): below 10 % low, below 25 % medium, else high.
CHURN_BANDS = ((0.10, "low"), (0.25, "medium"))
CHURN_HIGH = "high"
CLV_Z = 1.2816  # two-sided 80 % range of a normal approximation
# From this many rows (a live round's, a batch's) scoring runs on every core (`threads`): two threads made
# `pred_contrib` 1.6-1.9x faster from 128 rows on 2 cores.
PARALLEL_ROWS = 128
TWEEDIE_POWER = 1.3  # training.clv.VALUE_PARAMS


@dataclass
class Reasons:
    """The top-k reasons of n rows: feature names (None: no reason in that slot), value texts, contributions."""

    names: np.ndarray  # (n, k) object
    values: np.ndarray  # (n, k) object
    contributions: np.ndarray  # (n, k) float64
    _json: pa.Array | None = field(default=None, init=False, repr=False, compare=False)

    def json(self) -> pa.Array:
        """One JSON list per row, `[{"feature", "value", "contribution"}, ...]`, built with Arrow string kernels
        once (a batch writes it to the long and the wide table)."""
        if self._json is None:
            self._json = self._texts()
        return self._json

    def _texts(self) -> pa.Array:
        objects = []
        for slot in range(self.names.shape[1]):
            name = pa.array(self.names[:, slot], type=pa.string())
            value = pa.array(self.values[:, slot], type=pa.string())
            quoted = pc.binary_join_element_wise('"', _escape(value), '"', "")
            value_json = pc.fill_null(quoted, "null")
            contribution = pc.fill_null(_number_text(self.contributions[:, slot], 6), "0")
            objects.append(pc.binary_join_element_wise('{"feature":"', name, '","value":', value_json,
                                                       ',"contribution":', contribution, "}", ""))
        if not objects:
            return pa.array(["[]"] * len(self.names))
        return json_list(objects)


@dataclass
class ModelScores:
    """One model's scores of n rows: the score, an optional label (band, action), reasons and model extras."""

    model: str
    version: int
    score: np.ndarray
    reasons: Reasons
    label: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    columns: dict[str, Any] = field(default_factory=dict)  # the kind's own columns of the `predictions` view
    detail: pa.Array | None = None  # per row, a JSON object of what the long table's score and label leave out


def json_list(items: Sequence[pa.Array]) -> pa.Array:
    """Element-wise `[a,b,...]` of JSON texts, skipping nulls (Arrow's own "skip" mode loses rows in pyarrow 2x)."""
    joined = pc.fill_null(items[0], "")
    for item in items[1:]:
        both = pc.binary_join_element_wise(joined, pc.fill_null(item, ""), ",")
        joined = pc.if_else(pc.is_null(item), joined, pc.if_else(pc.equal(joined, ""), item, both))
    return pc.binary_join_element_wise("[", joined, "]", "")


def parse_json(text: Any) -> list[dict[str, Any]]:
    """A JSON list stored in the online store (empty or missing: no items)."""
    if not isinstance(text, str) or not text:
        return []
    value = json.loads(text)
    return value if isinstance(value, list) else []


PLAIN = frozenset({str, int, bool, type(None)})  # types JSON shows as they are


def scalar(value: Any) -> Any:
    """One stored or computed value as JSON shows it: a Python scalar, None for NaN and infinities."""
    if type(value) in PLAIN:  # the common case, answered first: a profile holds hundreds of values
        return value
    if hasattr(value, "as_py"):
        value = value.as_py()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _number_text(values: np.ndarray, decimals: int) -> pa.Array:
    """Numbers rounded to `decimals` as text (numpy rounding: Arrow's overflows on huge values); NaN → null."""
    rounded = np.round(np.asarray(values, dtype="float64"), decimals)
    return pc.cast(pa.array(np.where(np.isfinite(rounded), rounded, np.nan), from_pandas=True), pa.string())


_CONTROL = [chr(c) for c in range(0x20)]


def _escape(text: pa.Array) -> pa.Array:
    """Text as the inside of a JSON string: backslash, quote and the control characters escaped."""
    text = pc.replace_substring(text, "\\", "\\\\")
    text = pc.replace_substring(text, '"', '\\"')
    if pc.any(pc.match_substring_regex(text, "[\\x00-\\x1f]")).as_py():  # rare: one scan on the common path
        for char in _CONTROL:
            text = pc.replace_substring(text, char, f"\\u{ord(char):04x}")
    return text


def value_text(values: np.ndarray) -> np.ndarray:
    """Feature values as short text (yes/no, numbers to 2 decimals, categories as they are); None when missing."""
    try:
        array = pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        array = pa.array([None if pd.isna(v) else str(v) for v in values], type=pa.string())
    if pa.types.is_boolean(array.type):
        text = pc.if_else(array, "yes", "no")
    elif pa.types.is_floating(array.type):
        text = _number_text(array.to_numpy(zero_copy_only=False), 2)
    elif pa.types.is_dictionary(array.type):
        text = pc.cast(array.dictionary_decode(), pa.string())
    else:
        text = pc.cast(array, pa.string())
    return np.asarray(text.to_numpy(zero_copy_only=False), dtype=object)


def top_reasons(contributions: np.ndarray, names: Sequence[str], values: pd.DataFrame, k: int = K) -> Reasons:
    """The k strongest reasons per row. `contributions` has one column per name (no base value); `values` holds
    the raw feature values under the same names, rows in the same order."""
    index, chosen = top_k(contributions, k)
    labels = np.asarray(list(names), dtype=object)
    texts = np.full(index.shape, None, dtype=object)
    for slot in range(index.shape[1]):
        column = index[:, slot]
        for j in np.unique(column[column >= 0]):
            rows = column == j
            if labels[j] in values.columns:
                texts[rows, slot] = value_text(values[labels[j]].to_numpy()[rows])
    named = np.full(index.shape, None, dtype=object)
    if len(labels):
        named[index >= 0] = labels[index[index >= 0]]
    return Reasons(named, texts, chosen)


# ---------------------------------------------------------------- churn


def churn_band(probability: np.ndarray) -> np.ndarray:
    bands = np.full(len(probability), CHURN_HIGH, dtype=object)
    for threshold, name in reversed(CHURN_BANDS):
        bands[probability < threshold] = name
    return bands


def threads(rows: int) -> int:
    """LightGBM threads for scoring `rows` rows: every core the process may use for a batch (`OMP_NUM_THREADS` when
    set: a Spark task's share), one for the few rows of a request (served beside other requests, which use the
    other cores)."""
    return cores() if rows >= PARALLEL_ROWS else 1


def cores() -> int:
    given = os.environ.get("OMP_NUM_THREADS", "")
    return int(given) if given.isdigit() and int(given) > 0 else len(os.sched_getaffinity(0))


def _probability(model: Any, X: pd.DataFrame, k: int) -> tuple[np.ndarray, Reasons]:
    """A `training.churn.ChurnModel`'s calibrated probability and its reasons on the log-odds, from one
    `pred_contrib` call (the log-odds are the contributions' row sums)."""
    contributions = model.contributions(X, threads(len(X)))
    probability = np.asarray(model.probability_of(contributions.to_numpy().sum(axis=1)), dtype="float64")
    contributions = contributions.drop(columns="base_value")
    return probability, top_reasons(contributions.to_numpy(), list(contributions.columns), model.feature_values(X), k)


def score_churn(model: Any, version: int, X: pd.DataFrame, k: int = K) -> ModelScores:
    """`training.churn.ChurnModel`: calibrated probability, risk band, reasons on the log-odds."""
    probability, reasons = _probability(model, X, k)
    band = churn_band(probability)
    return ModelScores("churn", version, probability, reasons, band,
                       columns={"churn_probability": probability, "churn_band": band},
                       detail=pa.array(np.full(len(probability), "{}"), type=pa.string()))


def score_expansion(model: Any, version: int, X: pd.DataFrame, k: int = K) -> ModelScores:
    """The expansion model (a `ChurnModel` on other labels): calibrated probability of expanding, reasons on the
    log-odds."""
    probability, reasons = _probability(model, X, k)
    return ModelScores("expansion", version, probability, reasons, columns={"expansion_probability": probability},
                       detail=pa.array(np.full(len(probability), "{}"), type=pa.string()))


def score_response(model: Any, version: int, X: pd.DataFrame, k: int = K) -> ModelScores:
    """Campaign response (`training.response`): every channel × topic pair of each row in one batch predict; the
    best pair with its probability, each channel's best topic (`response_channels`), reasons of the best pair."""
    from c360.training.response import best, by_channel_best, pairs, pairs_matrix

    grid = pairs(pd.DataFrame({"_row": np.arange(len(X))}))  # the rows of `pairs_matrix`
    p = model.probability_of(model.raw_score_of(pairs_matrix(model, X)))
    top = best(grid, p, key="_row").sort_values("_row")
    chosen = X.reset_index(drop=True).assign(campaign_channel=top["best_channel"].to_numpy(),
                                             campaign_topic=top["best_topic"].to_numpy())
    probability, reasons = _probability(model, chosen, k)
    channels = by_channel_best(grid, p, key="_row")
    listed = _channel_lists(channels, len(X))
    columns = {"response_channel": top["best_channel"].to_numpy(dtype=object),
               "response_topic": top["best_topic"].to_numpy(dtype=object), "response_probability": probability,
               "response_channels": np.array(listed, dtype=object)}
    detail = [json.dumps({"topic": topic}) for topic in top["best_topic"]]
    return ModelScores("response", version, probability, reasons, top["best_channel"].to_numpy(dtype=object),
                       columns=columns, detail=pa.array(detail, type=pa.string()))


def _channel_lists(channels: pd.DataFrame, rows: int) -> list[str]:
    """Each row's channels (`by_channel_best`, keyed by `_row`) as its JSON list, in one pass: a pandas group per
    row cost most of a live round's response scoring."""
    lists: list[list[dict[str, Any]]] = [[] for _ in range(rows)]
    for row, channel, topic, probability in zip(channels["_row"], channels["campaign_channel"],
                                                channels["campaign_topic"], channels["probability"], strict=True):
        lists[row].append({"channel": channel, "topic": topic, "probability": round(float(probability), 6)})
    return [json.dumps(one) for one in lists]


# ---------------------------------------------------------------- CLV


def clv_dispersion(rmse: float, reference: np.ndarray, power: float = TWEEDIE_POWER) -> float:
    """Tweedie dispersion φ such that the model's variance φ·μ^p, averaged over a reference population (the
    customers the model was tested on: subscribed at the latest snapshot), equals its forward test MSE."""
    mean_power = float(np.mean(np.clip(reference, 0, None) ** power)) if len(reference) else 0.0
    return float(rmse) ** 2 / mean_power if mean_power > 0 else 0.0


def clv_range(value: np.ndarray, dispersion: float, power: float = TWEEDIE_POWER) -> tuple[np.ndarray, np.ndarray]:
    """80 % range of the 12-month value: μ ± 1.28 √(φ μ^p), never below zero."""
    spread = CLV_Z * np.sqrt(dispersion * np.clip(value, 0, None) ** power)
    return np.clip(value - spread, 0, None), value + spread


def score_clv(model: Any, version: int, X: pd.DataFrame, dispersion: float, k: int = K) -> ModelScores:
    """`training.clv_pipeline.ClvModel`: expected 12-month net revenue, its 80 % range, reasons on its log."""
    contributions = model.contributions(X, threads(len(X)))
    value = np.asarray(model.value_of(contributions), dtype="float64")
    contributions = contributions.drop(columns="base_value")
    values = transform_features_raw(X, model.spec)
    reasons = top_reasons(contributions.to_numpy(), list(contributions.columns), values, k)
    low, high = clv_range(value, dispersion)
    detail = pc.binary_join_element_wise('{"low":', pa.array(np.round(low, 2)).cast(pa.string()),
                                         ',"high":', pa.array(np.round(high, 2)).cast(pa.string()), "}", "")
    return ModelScores("clv", version, value, reasons, extra={"low": low, "high": high},
                       columns={"clv_value": value, "clv_low": low, "clv_high": high}, detail=detail)


def transform_features_raw(X: pd.DataFrame, spec: Any) -> pd.DataFrame:
    """Raw values of the model's columns under its prepared (LightGBM-safe) names, to word the reasons."""
    frame = X.set_axis([str(c) for c in X.columns], axis=1)
    return frame[list(spec.columns)].set_axis(list(spec.names), axis=1)


# ---------------------------------------------------------------- next best action


def score_nba(model: Any, version: int, X: pd.DataFrame, k: int = K) -> ModelScores:
    """`training.nba_pipeline.NbaModel`: recommended action, its expected net uplift over no action, every action's
    net uplift (`extra`, one array per action), reasons of the explained action's uplift in dollars. The choice is
    the model's own (`NbaModel.choose`)."""
    choice, contributions = model.choose_and_explain(X, consent.allowed(X, consent.ACTION_PURPOSE), threads(len(X)))
    raw = transform_features_raw(X[model.features], model.spec)
    reasons = top_reasons(contributions.to_numpy(), list(contributions.columns), raw, k)
    extra = {str(a): choice.uplift[a].to_numpy(dtype="float64") for a in choice.uplift.columns}
    alternatives = alternatives_json(choice.best, dict(extra))
    extra["explained"] = choice.explained
    columns = {"nba_action": choice.best, "nba_uplift": choice.score, "nba_alternatives": alternatives,
               "nba_withheld": withheld_json(choice.withheld)}
    return ModelScores("nba", version, choice.score, reasons, choice.best, extra, columns,
                       detail=pc.binary_join_element_wise('{"alternatives":', alternatives, "}", ""))


def alternatives_json(best: np.ndarray, uplifts: dict[str, np.ndarray]) -> pa.Array:
    """Per row, every action but the recommended one (`best`), best first: `[{"action", "uplift"}, ...]`."""
    actions = list(uplifts)
    matrix = np.column_stack([uplifts[a] for a in actions])
    order = np.argsort(-matrix, axis=1, kind="stable")
    names = np.asarray(actions, dtype=object)[order]
    ranked = np.take_along_axis(matrix, order, axis=1)
    parts = []
    for slot in range(len(actions)):
        keep = names[:, slot] != best
        name = pa.array(np.where(keep, names[:, slot], None), type=pa.string())
        value = pc.fill_null(_number_text(ranked[:, slot], 2), "null")
        parts.append(pc.binary_join_element_wise('{"action":"', name, '","uplift":', value, "}", ""))
    return json_list(parts)


def withheld_json(withheld: pd.DataFrame) -> pa.Array:
    """Per row, the actions withheld for consent, in the frame's column order: `["discount", ...]`."""
    parts = [pa.array(np.where(withheld[a].to_numpy(dtype=bool), f'"{a}"', None), type=pa.string())
             for a in withheld.columns]
    return json_list(parts) if parts else pa.array(["[]"] * len(withheld))


def not_proposed(stored: Any) -> list[dict[str, str]]:
    """The withheld actions of a stored `nba_withheld`, each with the purpose it needs and why, in words."""
    names: list[Any] = json.loads(stored) if isinstance(stored, str) and stored else []
    return [{"action": a, "purpose": consent.ACTION_PURPOSE[a], "reason": consent.not_proposed(a)}
            for a in names if a in consent.ACTION_PURPOSE]


# ---------------------------------------------------------------- what serving needs of a champion


class Scorer(Protocol):
    """What serving needs of a champion model, whatever its kind: the raw feature columns it reads (`inputs`) and
    its scores with top-k reasons of a frame holding them (`score`). One implementation per kind (`SCORERS`)."""

    @property
    def inputs(self) -> list[str]: ...

    @property
    def reads(self) -> list[str]:
        """The columns `score` reads: the inputs, and what restricts the choice (the next best action's opt-outs)."""
        ...

    def score(self, X: pd.DataFrame, k: int = K) -> ModelScores: ...

    def present(self, values: dict[str, Any]) -> dict[str, Any]:
        """The kind's own fields of the API's prediction, from its `ModelScores.columns` as stored (one row)."""
        ...


@dataclass(frozen=True)
class _Scorer:
    model: Any
    version: int

    @classmethod
    def of(cls, model: Any, version: int, metrics: dict[str, float], reference: pd.DataFrame | None) -> Scorer:
        """The scorer of a loaded champion: its model, version, run metrics and the latest feature snapshot."""
        return cls(model, version)

    @property
    def inputs(self) -> list[str]:
        return list(self.model.spec.columns)

    @property
    def reads(self) -> list[str]:
        return self.inputs

    def score(self, X: pd.DataFrame, k: int = K) -> ModelScores:
        raise NotImplementedError

    def present(self, values: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


@dataclass(frozen=True)
class ChurnScorer(_Scorer):
    """`training.churn.ChurnModel` (`score_churn`)."""

    def score(self, X: pd.DataFrame, k: int = K) -> ModelScores:
        return score_churn(self.model, self.version, X, k)

    def present(self, values: dict[str, Any]) -> dict[str, Any]:
        return {"probability": scalar(values.get("churn_probability")), "band": values.get("churn_band")}


@dataclass(frozen=True)
class ClvScorer(_Scorer):
    """`training.clv_pipeline.ClvModel` (`score_clv`), with the Tweedie dispersion of its 80 % range: from the
    model's forward test RMSE (logged with the run) and its predictions on the population it was tested on, the
    subscribed customers of `reference` (the latest feature snapshot); 0 (no range) without them."""

    dispersion: float = 0.0

    @classmethod
    def of(cls, model: Any, version: int, metrics: dict[str, float], reference: pd.DataFrame | None) -> Scorer:
        scorer = cls(model, version)
        rmse = metrics.get("rmse")
        if rmse is None or reference is None or reference.empty:
            return scorer
        if "subscribed" in reference.columns:
            reference = reference[reference["subscribed"].fillna(False).astype(bool)]
        value = np.asarray(model.predict(reference[scorer.inputs]), dtype="float64")
        return cls(model, version, clv_dispersion(rmse, value))

    def score(self, X: pd.DataFrame, k: int = K) -> ModelScores:
        return score_clv(self.model, self.version, X, self.dispersion, k)

    def present(self, values: dict[str, Any]) -> dict[str, Any]:
        return {"value_12m": scalar(values.get("clv_value")), "low": scalar(values.get("clv_low")),
                "high": scalar(values.get("clv_high")), "range": "80 %"}


@dataclass(frozen=True)
class NbaScorer(_Scorer):
    """`training.nba_pipeline.NbaModel` (`score_nba`): its features and the scale (MRR) it multiplies by."""

    @property
    def inputs(self) -> list[str]:
        return list(self.model.inputs)

    @property
    def reads(self) -> list[str]:
        return [*self.inputs, *consent.FEATURES]

    def score(self, X: pd.DataFrame, k: int = K) -> ModelScores:
        return score_nba(self.model, self.version, X, k)

    def present(self, values: dict[str, Any]) -> dict[str, Any]:
        return {"action": values.get("nba_action"), "uplift": scalar(values.get("nba_uplift")),
                "alternatives": parse_json(values.get("nba_alternatives")),
                "not_proposed": not_proposed(values.get("nba_withheld"))}


@dataclass(frozen=True)
class ExpansionScorer(_Scorer):
    """The expansion model (`score_expansion`)."""

    def score(self, X: pd.DataFrame, k: int = K) -> ModelScores:
        return score_expansion(self.model, self.version, X, k)

    def present(self, values: dict[str, Any]) -> dict[str, Any]:
        return {"available": True, "probability": scalar(values.get("expansion_probability"))}


@dataclass(frozen=True)
class ResponseScorer(_Scorer):
    """The campaign response model (`score_response`): it reads the customer's features, not the send's channel and
    topic, which it sets itself."""

    @property
    def inputs(self) -> list[str]:
        from c360.training.response import SEND

        return [c for c in self.model.spec.columns if c not in SEND]

    def score(self, X: pd.DataFrame, k: int = K) -> ModelScores:
        return score_response(self.model, self.version, X, k)

    def present(self, values: dict[str, Any]) -> dict[str, Any]:
        return {"available": True, "probability": scalar(values.get("response_probability")),
                "channel": values.get("response_channel"), "topic": values.get("response_topic"),
                "channels": parse_json(values.get("response_channels"))}


SCORERS: dict[str, type[_Scorer]] = {
    "churn": ChurnScorer, "clv": ClvScorer, "nba": NbaScorer, "expansion": ExpansionScorer,
    "response": ResponseScorer}


# ---------------------------------------------------------------- wide rows: what the online store keeps


def wide(scores: ModelScores) -> dict[str, Any]:
    """The `predictions` feature view's columns of one model's scores (see feature_repo/predictions.py)."""
    n = len(scores.score)
    return {f"{scores.model}_version": np.full(n, scores.version, dtype="int64"), **scores.columns,
            f"{scores.model}_reasons": scores.reasons.json()}
