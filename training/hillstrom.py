"""Next-best-action evaluation on Kevin Hillstrom's MineThatData e-mail experiment (2008).

64,000 customers were randomly sent a "Mens E-Mail", a "Womens E-Mail" or "No E-Mail"; visit, conversion and
spend were tracked for two weeks. Because assignment is random, any policy (who gets which e-mail) can be
valued on held-out customers by inverse propensity, and compared with the obvious baselines on the same
resampled customers. Cross-fitting (two halves, each scored by a model trained on the other) uses every
customer once as test data. Model settings are the fixed regularised defaults of ``MultiArmUplift``; nothing
here is tuned on the halves being reported.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from c360.core.settings import Settings
from c360.training.uplift import (
    Learner,
    MultiArmUplift,
    assignment_propensity,
    cross_fit,
    fold_ids,
    paired_bootstrap,
    qini_auc,
    qini_curve,
    recommend_from_outcomes,
    uplift_at_k,
)

CONTROL = "No E-Mail"
OUTCOMES = ("visit", "conversion", "spend")
FEATURES = ("recency", "history_segment", "history", "mens", "womens", "zip_code", "newbie", "channel")
TUTORIAL_UPLIFT_AT_30 = 0.0661  # scikit-uplift pipeline tutorial: Womens vs No E-Mail, visit, 50/50 split, seed 42


def default_path() -> Path:
    """`hillstrom/hillstrom.csv` in the public data folder (the `public_data` setting, `C360_PUBLIC_DATA`)."""
    return Settings().public_data / "hillstrom" / "hillstrom.csv"


def load_hillstrom(path: Path | str | None = None) -> pd.DataFrame:
    """The experiment as published: eight customer features, ``segment`` (the arm) and the three outcomes."""
    path = path if path is not None else default_path()
    frame = pd.read_csv(path)
    missing = {*FEATURES, "segment", *OUTCOMES} - set(frame.columns)
    if missing:
        raise ValueError(f"{path} lacks Hillstrom columns: {sorted(missing)}")
    return frame


def _policy_report(table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    report = {}
    for name, row in table.iterrows():
        entry: dict[str, Any] = {
            "value": float(row["value"]),
            "ci": [float(row["value_low"]), float(row["value_high"])],
        }
        if name != "policy":
            entry |= {
                "diff": float(row["diff"]),
                "diff_ci": [float(row["diff_low"]), float(row["diff_high"])],
                "significant": bool(row["significant"]),
                "policy_better": bool(row["diff_low"] > 0),
            }
        report[str(name)] = entry
    return report


def _qini_by_arm(
    frame: pd.DataFrame, outcomes: pd.DataFrame, target: str, folds: np.ndarray
) -> tuple[dict[str, float], dict[str, pd.DataFrame]]:
    """Qini AUC of each e-mail vs no e-mail, the mean over folds, plus each fold's curve.

    Each fold is ranked by the one model that scored it: pooling folds would rank customers across two models
    whose uplift scales differ (a calibration slope of 0 in one fold makes all its scores tie).
    """
    aucs, curves = {}, {}
    for arm in outcomes.columns.drop(CONTROL):
        per_fold = []
        for fold in np.unique(folds):
            rows = (frame["segment"].isin([arm, CONTROL]) & (folds == fold)).to_numpy()
            uplift = (outcomes[arm] - outcomes[CONTROL])[rows]
            flag = frame["segment"][rows] == arm
            per_fold.append(qini_auc(uplift, flag, frame[target][rows]))
            curves[f"{arm} vs {CONTROL}, {target}, fold {fold + 1}"] = qini_curve(uplift, flag, frame[target][rows])
        aucs[str(arm)] = float(np.mean(per_fold))
    return aucs, curves


def tutorial_uplift_at_30(frame: pd.DataFrame, learner: Learner = "t") -> float:
    """uplift@30% (overall) for Womens vs No E-Mail on visit, on scikit-uplift's tutorial split."""
    pair = frame[frame["segment"] != "Mens E-Mail"]
    train, test = train_test_split(pair, test_size=0.5, random_state=42)
    model = MultiArmUplift(learner).fit(train[list(FEATURES)], train["segment"], train["visit"], control=CONTROL)
    uplift = model.predict_uplift(test[list(FEATURES)])["Womens E-Mail"]
    return uplift_at_k(uplift, test["segment"] == "Womens E-Mail", test["visit"], k=0.3, strategy="overall")


def _cross_fitted(frame: pd.DataFrame, target: str, learner: Learner, folds: int, seed: int) -> pd.DataFrame:
    return cross_fit(
        lambda: MultiArmUplift(learner, seed=seed),
        frame[list(FEATURES)],
        frame["segment"],
        frame[target],
        folds=folds,
        seed=seed,
        control=CONTROL,
    )


def evaluate_hillstrom(
    path: Path | str | None = None,
    outcome: str = "spend",
    seed: int = 0,
    *,
    n_boot: int = 1000,
    folds: int = 2,
    learner: Learner = "t",
    curves: bool = False,
) -> dict[str, Any]:
    """Cross-fitted learned policy vs all-Mens, all-Womens, no e-mail and random, plus Qini and uplift@30%.

    ``policies`` holds each row's IPS value with its 95 % bootstrap CI and, for the baselines, the paired CI of
    learned − baseline (``significant`` when it excludes 0). ``qini_auc`` gives each e-mail vs no e-mail on
    visit and on ``outcome``; ``curves=True`` adds the Qini curves as DataFrames (for ``qini_chart``).
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}")
    started = time.perf_counter()
    frame = load_hillstrom(path)
    oof = {target: _cross_fitted(frame, target, learner, folds, seed) for target in dict.fromkeys(("visit", outcome))}
    policy = recommend_from_outcomes(oof[outcome], CONTROL)
    table = paired_bootstrap(
        frame[outcome], frame["segment"], policy, assignment_propensity(frame["segment"]), n_boot=n_boot, seed=seed
    )
    qini = {target: _qini_by_arm(frame, oof[target], target, fold_ids(frame["segment"], folds, seed)) for target in oof}
    result: dict[str, Any] = {
        "outcome": outcome,
        "learner": learner,
        "n": len(frame),
        "folds": folds,
        "n_boot": n_boot,
        "seed": seed,
        "arm_means": frame.groupby("segment")[list(OUTCOMES)].mean().to_dict(orient="index"),
        "policy_share": policy.value_counts(normalize=True).to_dict(),
        "policies": _policy_report(table),
        "qini_auc": {target: aucs for target, (aucs, _) in qini.items()},
        "uplift_at_30": {"value": tutorial_uplift_at_30(frame, learner), "tutorial": TUTORIAL_UPLIFT_AT_30},
    }
    if curves:
        result["qini_curves"] = {
            label: curve for _, fold_curves in qini.values() for label, curve in fold_curves.items()
        }
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result
