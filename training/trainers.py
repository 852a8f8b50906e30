"""Each feature-store model's training pipeline, by kind (`specs.MODELS`' keys): what `c360 refresh` runs when
training is due. Imported on call, as each pipeline pulls in its own libraries.

A model with too little to learn from yet (`datasets.NoExamples`: no labelled period, an empty or one-outcome part
of its split, no experiment waves) is skipped with the reason, so one model's missing data does not stop the others'
retrain; its previous versions stay as they were."""

from __future__ import annotations

from collections.abc import Callable

from c360.core.settings import Settings
from c360.training.datasets import NoExamples
from c360.training.tracking import TrainReport


def trainers() -> dict[str, Callable[[Settings], TrainReport]]:
    from c360.training.clv_pipeline import train_clv
    from c360.training.nba_pipeline import train_nba
    from c360.training.pipeline import train_churn, train_expansion
    from c360.training.response import train_response

    return {"churn": train_churn, "clv": train_clv, "nba": train_nba, "expansion": train_expansion,
            "response": train_response}


def train(s: Settings, kind: str) -> TrainReport | str:
    """The model's training report, or the reason it was skipped."""
    try:
        return trainers()[kind](s)
    except NoExamples as e:
        return str(e)
