"""Personas: data-driven groups of customers by behaviour, each with a plain name, a size and a profile.

`fit` groups the latest feature snapshot's customers with k-means on a small set of behaviour features
(`BEHAVIOUR`: usage, breadth of use, campaign engagement, support, payment trouble, spend, tenure, sentiment). Not
the traits (`segment`, `region`, `plan`: they already are fields) and never the sensitive `age_band`. A feature the
snapshot lacks, or that does not vary, is left out, so a company without one source still gets personas.

Preparation: a missing value takes the feature's median; a non-negative feature is log-transformed (`log1p`: counts
and money are skewed, and a few whales would otherwise make their own persona); each is standardized and clipped at
±5 standard deviations. k is the number of groups in `KS` (3..8) with the best silhouette on a sample of `SAMPLE`
customers, unless given (`c360 personas fit --k K`); k-means then fits on up to `FIT_SAMPLE` customers and every
customer goes to the nearest centroid.

Re-running on the same data gives the same personas, names and order: the rows are sorted by customer id, samples
and k-means use one seed, and personas are ordered by size (largest first), then by centroid.

A persona's name says what distinguishes it: the features whose standardized centroid is furthest from the
population's, in words with a direction ("very active, broad use"), taken only where the members' mean in original
units differs from the population's in that same direction. Two words, more when two personas would share a name.

The model is a small JSON file, `C360_HOME/personas/model.json` (`path`): the preparation, centroids, names, sizes,
each persona's profile (members' means against the population's, in original units) and the k criterion. It holds
aggregates only, no customer id, so it is not a personal-data store. Each customer's persona is derived from the
model and their features wherever it is shown: `c360 score` writes it into the wide score files (so audiences can
filter on `persona`), the profile computes it from the features it shows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from c360.core.settings import Settings
from c360.features import store

# feature → (word when the persona is above the population, word when below)
BEHAVIOUR: dict[str, tuple[str, str]] = {
    "active_days_30d": ("very active", "rarely active"),
    "features_used_90d": ("broad use", "narrow use"),
    "campaigns_opened_180d": ("open campaigns", "ignore campaigns"),
    "tickets_90d": ("many tickets", "few tickets"),
    "payment_failures_12m": ("payment trouble", "pay smoothly"),
    "mrr": ("big spenders", "small spenders"),
    "tenure_days": ("long-standing", "newcomers"),
    "nps_last": ("promoters", "detractors"),
}
KS = range(3, 9)
SAMPLE = 3_000  # customers the silhouette of each k is computed on (quadratic in size)
FIT_SAMPLE = 50_000  # customers k-means fits on; everyone is then assigned to the nearest centroid
SEED = 0
CLIP = 5.0
WORDS = 2


@dataclass(frozen=True)
class Model:
    as_of: str
    features: list[str]
    medians: list[float]
    logged: list[bool]
    centre: list[float]
    scale: list[float]
    centroids: list[list[float]]  # standardized, in persona order
    names: list[str]
    sizes: list[int]
    profiles: list[dict[str, dict[str, float]]]  # feature → {"persona": members' mean, "population": mean}
    criterion: dict[str, Any]  # how k was chosen: {"by": "silhouette" | "given", "k": k, "scores": {k: score}}

    @property
    def digest(self) -> str:
        """Short id of the model: a scoring run with other personas is another run."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]

    def personas(self) -> list[dict[str, Any]]:
        return [{"persona": name, "size": size, "share": round(size / sum(self.sizes), 4), "profile": profile}
                for name, size, profile in zip(self.names, self.sizes, self.profiles, strict=True)]


def path(s: Settings) -> Path:
    return s.home / "personas" / "model.json"


# ---------------------------------------------------------------- preparation


def _raw(frame: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    return frame.reindex(columns=features).apply(pd.to_numeric, errors="coerce").astype("float64")


def _standardized(model: Model, frame: pd.DataFrame) -> np.ndarray:
    return _scaled(model, _raw(frame, model.features).to_numpy())


def _number(value: Any) -> float:
    """One value as `_raw` reads it: a number, else NaN."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


def _scaled(model: Model, raw: np.ndarray) -> np.ndarray:
    """Raw values (rows × the model's features, NaN for missing) filled, logged, centred and scaled as in fitting."""
    x = np.where(np.isnan(raw), model.medians, raw)
    logged = np.array(model.logged)
    # maximum/minimum: np.clip's Python wrapper cost more than the arithmetic of a profile's one row
    x[:, logged] = np.log1p(np.maximum(x[:, logged], 0))
    return np.minimum(np.maximum((x - model.centre) / model.scale, -CLIP), CLIP)


def _preparation(frame: pd.DataFrame) -> dict[str, list]:
    """Medians, log flags, centre and scale of the behaviour features present and varying in `frame`."""
    raw = _raw(frame, [f for f in BEHAVIOUR if f in frame.columns])
    raw = raw.loc[:, raw.notna().any()]
    medians = raw.median()
    filled = raw.fillna(medians)
    logged = filled.min() >= 0
    x = filled.apply(lambda column: np.log1p(column) if logged[column.name] else column)
    keep = x.std() > 0
    features = [str(f) for f in x.columns[keep]]
    if len(features) < 2:
        raise ValueError(f"personas need at least two varying behaviour features of {', '.join(BEHAVIOUR)}; "
                         f"the snapshot has {', '.join(features) or 'none'}")
    return {"features": features, "medians": medians[features].tolist(), "logged": logged[features].tolist(),
            "centre": x[features].mean().tolist(), "scale": x[features].std().tolist()}


# ---------------------------------------------------------------- fitting


def _sample(n: int, size: int) -> np.ndarray:
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(SEED).choice(n, size, replace=False))


def _kmeans(x: np.ndarray, k: int) -> Any:
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # small fits: threads cost more than they give, and the result is the same
        return KMeans(n_clusters=k, n_init=4, random_state=SEED).fit(x)


def choose_k(x: np.ndarray) -> dict[str, Any]:
    """The k of `KS` with the best silhouette on a sample (ties: the smaller k)."""
    from sklearn.metrics import silhouette_score

    sample = x[_sample(len(x), SAMPLE)]
    scores = {k: round(float(silhouette_score(sample, _kmeans(sample, k).labels_, random_state=SEED)), 4)
              for k in KS if k < len(sample)}
    if not scores:
        raise ValueError(f"too few customers ({len(x)}) for personas")
    return {"by": "silhouette", "k": max(scores, key=lambda k: (scores[k], -k)), "scores": scores}


def _ordered(centroids: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroids and labels renumbered canonically: largest persona first, then by centroid."""
    sizes = np.bincount(labels, minlength=len(centroids))
    order = sorted(range(len(centroids)), key=lambda i: (-sizes[i], *np.round(centroids[i], 6)))
    renumber = np.empty(len(order), dtype=int)
    renumber[order] = np.arange(len(order))
    return centroids[order], renumber[labels]


def _nearest(centroids: np.ndarray, x: np.ndarray) -> np.ndarray:
    return ((x[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)


def _profiles(raw: pd.DataFrame, labels: np.ndarray, k: int) -> list[dict[str, dict[str, float]]]:
    population = raw.mean()
    return [{f: {"persona": round(float(m), 4), "population": round(float(population[f]), 4)}
             for f, m in raw[labels == i].mean().items()} for i in range(k)]


def _distinguishing(centroid: np.ndarray, profile: dict[str, dict[str, float]], features: list[str]) -> list[str]:
    """Words for the features that set a persona apart, most distinct first: the standardized centroid's direction,
    where the members' mean in original units differs from the population's the same way."""
    words = []
    for i in np.argsort(-np.abs(centroid), kind="stable"):
        f = features[i]
        diff = profile[f]["persona"] - profile[f]["population"]
        if diff != 0 and np.sign(diff) == np.sign(centroid[i]):
            words.append(BEHAVIOUR[f][0 if diff > 0 else 1])
    return words


def names(words: list[list[str]]) -> list[str]:
    """Unique names: `WORDS` words each, more where two personas would share a name, a number as the last resort."""
    counts = [min(WORDS, len(w)) for w in words]
    while True:
        named = [", ".join(w[:n]) or "typical" for w, n in zip(words, counts, strict=True)]
        clashes = [i for i, name in enumerate(named) if named.count(name) > 1 and counts[i] < len(words[i])]
        if not clashes:
            break
        for i in clashes:
            counts[i] += 1
    return [name if named.count(name) == 1 else f"{name} ({named[:i + 1].count(name)})"
            for i, name in enumerate(named)]


def fit(frame: pd.DataFrame, as_of: str, k: int | None = None) -> Model:
    """Personas of the customers in `frame` (a feature snapshot); `k` given, or chosen by silhouette."""
    frame = frame.sort_values("customer_id", kind="stable").reset_index(drop=True)
    prep = _preparation(frame)
    bare = Model(as_of, **prep, centroids=[], names=[], sizes=[], profiles=[], criterion={})
    x = _standardized(bare, frame)
    criterion: dict[str, Any] = {"by": "given", "k": k, "scores": {}} if k is not None else choose_k(x)
    k = int(criterion["k"])
    if not 1 <= k < len(x):
        raise ValueError(f"k must be between 1 and {len(x) - 1} for {len(x)} customers, not {k}")
    fitted = _kmeans(x[_sample(len(x), FIT_SAMPLE)], k)
    centroids, labels = _ordered(fitted.cluster_centers_, _nearest(fitted.cluster_centers_, x))
    profiles = _profiles(_raw(frame, prep["features"]), labels, k)
    words = [_distinguishing(c, p, prep["features"]) for c, p in zip(centroids, profiles, strict=True)]
    return Model(as_of, **prep, centroids=np.round(centroids, 6).tolist(), names=names(words),
                 sizes=np.bincount(labels, minlength=k).tolist(), profiles=profiles, criterion=criterion)


def assign(model: Model, frame: pd.DataFrame) -> np.ndarray:
    """Each row's persona name."""
    if frame.empty:
        return np.array([], dtype=object)
    return np.array(model.names, dtype=object)[_nearest(np.array(model.centroids), _standardized(model, frame))]


# ---------------------------------------------------------------- the stored model


def fit_latest(s: Settings, k: int | None = None) -> Model:
    """Fit on the latest snapshot and save the model (`path`)."""
    latest = store.latest_snapshot_date(s)
    model = fit(store.read_snapshot(s, latest), f"{latest:%Y-%m-%d}", k)
    target = path(s)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(model), indent=1))
    tmp.replace(target)
    return model


def load(s: Settings) -> Model | None:
    """The fitted model, or None before `c360 personas fit`."""
    p = path(s)
    try:
        return _read(p, p.stat().st_mtime_ns)
    except FileNotFoundError:
        return None


@lru_cache(maxsize=4)
def _read(p: Path, mtime_ns: int) -> Model:
    raw = json.loads(p.read_text())
    raw["criterion"]["scores"] = {int(k): v for k, v in raw["criterion"]["scores"].items()}
    return Model(**raw)


def persona_of(s: Settings, features: dict[str, Any]) -> str | None:
    """One customer's persona from their features, or None before `c360 personas fit`."""
    model = load(s)
    if model is None:
        return None
    # Plain numpy for one row: a one-row DataFrame cost most of a profile's CPU time (bench/serve.py)
    row = _scaled(model, np.array([[_number(features.get(f)) for f in model.features]]))
    return str(model.names[int(_nearest(np.array(model.centroids), row)[0])])
