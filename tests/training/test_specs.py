"""The model table (`training.specs.MODELS`) and the one choice of the next best action (`training.uplift.choose`)."""

import numpy as np
import pandas as pd

from c360.feature_repo.services import MODELS as SERVICES
from c360.training import labels, registry
from c360.training.specs import KINDS, MODELS
from c360.training.uplift import choose, recommend_from_outcomes


def test_one_spec_per_kind_with_its_own_name_and_a_feature_service():
    assert tuple(MODELS) == KINDS
    assert all(kind == spec.kind for kind, spec in MODELS.items())
    assert len({spec.name for spec in MODELS.values()}) == len(MODELS)
    assert {spec.service for spec in MODELS.values()} <= set(SERVICES)


def test_the_pipelines_and_the_registry_read_the_table():
    from c360.training import clv_pipeline, nba_pipeline, pipeline

    churn, clv, nba, expansion, response = (MODELS[k] for k in KINDS)
    assert churn.name == pipeline.CHURN_MODEL and churn.service == pipeline.SERVICE
    assert pipeline.CHURN_TASK.spec is churn and pipeline.EXPANSION_TASK.spec is expansion
    assert expansion.horizon_days == labels.EXPANSION_HORIZON_DAYS
    assert response.horizon_days == labels.RESPONSE_HORIZON_DAYS and not response.required
    assert clv.name == clv_pipeline.CLV_MODEL and clv.service == clv_pipeline.SERVICE
    assert nba.name == nba_pipeline.NBA_MODEL and nba.service == nba_pipeline.SERVICE
    assert churn.horizon_days == labels.CHURN_HORIZON_DAYS and clv.horizon_days == labels.CLV_HORIZON_DAYS
    assert nba.horizon_days == nba_pipeline.HORIZON_DAYS
    assert registry.CHURN_GATE is MODELS["churn"].gate


def test_every_model_has_its_trainer():
    from c360.training.trainers import trainers

    assert tuple(trainers()) == KINDS


def test_choose_ties_go_to_the_control_and_undefined_outcomes_lose():
    net = pd.DataFrame({"no_action": [0.0, 1.0, 0.0, np.nan], "a": [0.0, 3.0, np.nan, 1.0],
                        "b": [-1.0, 2.0, -2.0, 2.0]}, index=[10, 11, 12, 13])
    choice = choose(net, "no_action")
    assert list(choice.best) == ["no_action", "a", "no_action", "b"]
    assert list(choice.explained) == ["a", "a", "b", "b"]  # for no_action: the best alternative
    np.testing.assert_allclose(choice.score[:3], [0.0, 2.0, 0.0])
    assert list(choice.uplift.columns) == list(net.columns)
    recommended = recommend_from_outcomes(net.iloc[:3], "no_action")
    assert list(recommended) == ["no_action", "a", "no_action"] and list(recommended.index) == [10, 11, 12]
