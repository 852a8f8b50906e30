"""Multi-arm uplift: known effects on synthetic experiments, generic inputs, and the Hillstrom floors."""

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from c360.training import uplift
from c360.training.uplift import MultiArmUplift

HILLSTROM = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hillstrom" / "hillstrom.csv"
COSTS = {"A": 0.3, "B": 0.3}


def experiment(n: int, seed: int) -> dict:
    """Randomized 3-arm test: A adds 1 when x > 0.25, B adds 1 when x < -0.25, nothing helps in between."""
    rng = np.random.default_rng(seed)
    x, z = rng.uniform(-1, 1, n), rng.normal(size=n)
    arm = rng.choice(np.array(["none", "A", "B"], dtype=object), n)
    tau = {"none": np.zeros(n), "A": (x > 0.25).astype(float), "B": (x < -0.25).astype(float)}
    effect = np.select([arm == "A", arm == "B"], [tau["A"], tau["B"]], 0.0)
    y = 1 + z + rng.normal(size=n) + effect
    oracle = np.where(x > 0.25, "A", np.where(x < -0.25, "B", "none")).astype(object)
    return {"X": pd.DataFrame({"x": x, "z": z}), "arm": arm, "y": y, "tau": tau, "oracle": oracle}


def net_gain(policy, tau: dict, costs: dict) -> float:
    """True mean gain over doing nothing, net of cost, known by construction."""
    policy = np.asarray(policy, dtype=object)
    return float(sum(np.where(policy == a, t - costs.get(a, 0.0), 0.0) for a, t in tau.items()).mean())


@pytest.fixture(scope="module")
def train():
    return experiment(6000, seed=0)


@pytest.fixture(scope="module")
def fresh():
    return experiment(20000, seed=1)


@pytest.fixture(scope="module", params=["t", "x"])
def model(request, train):
    return MultiArmUplift(request.param).fit(train["X"], train["arm"], train["y"], control="none")


# ---------------------------------------------------------------- learner on known effects


def test_recommends_the_right_arm_for_most_customers(model, fresh):
    recommended = model.recommend(fresh["X"], COSTS)
    assert set(recommended) <= {"none", "A", "B"}
    assert (recommended.to_numpy() == fresh["oracle"]).mean() > 0.85


def test_policy_gain_close_to_oracle(model, fresh):
    oracle_gain = net_gain(fresh["oracle"], fresh["tau"], COSTS)  # 0.75 x (1 - 0.3)
    assert oracle_gain == pytest.approx(0.525, abs=0.02)
    assert net_gain(model.recommend(fresh["X"], COSTS), fresh["tau"], COSTS) > 0.9 * oracle_gain


def test_uplift_estimates_the_effects(model, fresh):
    predicted = model.predict_uplift(fresh["X"])
    assert list(predicted.columns) == ["A", "B"]
    for arm in ("A", "B"):
        helped = fresh["tau"][arm] == 1
        assert predicted[arm][helped].mean() - predicted[arm][~helped].mean() > 0.6
    outcomes = model.predict_outcomes(fresh["X"])
    assert list(outcomes.columns) == ["none", "A", "B"]
    assert np.allclose(outcomes["A"] - outcomes["none"], predicted["A"])


@pytest.mark.parametrize("learner", ["t", "x"])
def test_contributions_sum_to_the_uplift(learner, train, fresh):
    model = MultiArmUplift(learner, calibrate=False).fit(train["X"], train["arm"], train["y"], control="none")
    X = fresh["X"].head(500)
    matrix = uplift.transform_features(X, model.spec_)
    for arm in ("A", "B"):
        contributions = model.uplift_contributions(matrix, arm)
        assert contributions.shape == (len(X), 3)
        assert np.allclose(contributions.sum(axis=1), model.predict_uplift(X)[arm])
        assert np.abs(contributions[:, 0]).mean() > 2 * np.abs(contributions[:, 1]).mean()  # x sets the effects


@pytest.mark.parametrize("learner", ["t", "x"])
@pytest.mark.parametrize("binary", [False, True])
def test_the_boosters_predict_as_their_wrappers_without_a_warning(learner, binary, train, fresh):
    """Predictions go to each LightGBM booster itself: scikit-learn's wrappers warned at every call that the matrix
    has no feature names (four warnings in the server log per live round); the numbers are the wrappers'."""
    y = (train["y"] > 1.5) if binary else train["y"]
    model = MultiArmUplift(learner).fit(train["X"], train["arm"], y, control="none")
    X = fresh["X"].head(300)
    matrix = uplift.transform_features(X, model.spec_)
    rows = uplift.lgb_matrix(matrix)
    fitted = [*model.models_.values(), *(m for pair in getattr(model, "effect_models_", {}).values() for m in pair)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict_uplift(X)
        model.uplift_contributions(matrix, "A")
        ours = [model._predict_one(m, rows) for m in fitted]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # theirs
        wrapped = [m.predict_proba(rows)[:, 1] if hasattr(m, "predict_proba") else m.predict(rows) for m in fitted]
    assert len(fitted) >= 3 and all(np.array_equal(a, b) for a, b in zip(ours, wrapped, strict=True))


def test_a_flat_arm_runs_no_tree_and_predicts_its_average_effect(train, fresh):
    """An arm calibrated to slope 0 is not predicted (nor explained): its uplift is its average effect, exactly what
    running its model and multiplying by 0 gave; the counter-check: with a slope, the arm's model does run."""
    model = MultiArmUplift("t", calibrate=False).fit(train["X"], train["arm"], train["y"], control="none")
    X = fresh["X"].head(500)
    matrix = uplift.transform_features(X, model.spec_)
    running = model._raw_outcomes(matrix)
    model.calibration_ = {"A": (0.3, 0.0, 0.1), "B": (0.2, 0.5, 0.1)}
    assert list(model._raw_outcomes(matrix).columns) == ["none", "B"]  # A's model did not run
    predicted = model.predict_uplift(X)
    assert (predicted["A"] == 0.3 + 0.0 * (running["A"] - running["none"] - 0.1)).all()
    assert np.allclose(predicted["B"], 0.2 + 0.5 * (running["B"] - running["none"] - 0.1), rtol=1e-12)
    assert np.allclose(model.predict_outcomes(X)["A"], running["none"] + 0.3, rtol=1e-12)


def test_control_when_nothing_pays(model, fresh):
    assert set(model.recommend(fresh["X"], {"A": 5.0, "B": 5.0})) == {"none"}
    with pytest.raises(ValueError, match="unknown arms"):
        model.recommend(fresh["X"], {"C": 1.0})


def test_propensities_are_the_assignment_shares(model, train):
    shares = pd.Series(train["arm"]).value_counts(normalize=True)
    assert model.propensity_ == pytest.approx(shares.to_dict())
    assert model.propensity_of(["A", "none"]) == pytest.approx([shares["A"], shares["none"]])


def test_calibration_keeps_real_heterogeneity_and_drops_noise(train):
    real = MultiArmUplift().fit(train["X"], train["arm"], train["y"], control="none")
    assert all(slope > 0.5 for _, slope, _ in real.calibration_.values())
    noise_only = np.random.default_rng(5).normal(size=len(train["y"]))
    null = MultiArmUplift().fit(train["X"], train["arm"], noise_only, control="none")
    assert all(slope < 0.5 for _, slope, _ in null.calibration_.values())


# ---------------------------------------------------------------- evaluation


def test_ips_value_matches_the_analytic_value():
    data = experiment(30000, seed=2)
    prop = uplift.assignment_propensity(data["arm"])
    table = uplift.paired_bootstrap(
        data["y"], data["arm"], data["oracle"], prop, n_boot=300, seed=0, alpha=0.01, oracle=data["oracle"]
    )
    # E[y] = 1 + mean effect of the arm given: oracle 1 + 0.75, all A 1 + 0.375, random 1 + 0.75 / 3.
    analytic = {"policy": 1.75, "all A": 1.375, "all B": 1.375, "all none": 1.0, "random": 1.25, "oracle": 1.75}
    for row, value in analytic.items():
        assert table.loc[row, "value_low"] < value < table.loc[row, "value_high"], row
    assert table.loc["policy", "value"] == pytest.approx(
        uplift.policy_value(data["y"], data["arm"], data["oracle"], prop)
    )
    assert table.loc["all A", "significant"] and table.loc["all A", "diff_low"] > 0
    assert not table.loc["oracle", "significant"]


def test_paired_difference_is_tighter_than_the_values():
    data = experiment(6000, seed=3)
    prop = uplift.assignment_propensity(data["arm"])
    table = uplift.paired_bootstrap(data["y"], data["arm"], data["oracle"], prop, n_boot=200)
    # Independent CIs would combine as sqrt(w_policy² + w_baseline²); pairing cancels the noise of the customers
    # both policies send the same arm (here: A for x > 0.25, and every row for random).
    diff_width = table["diff_high"] - table["diff_low"]
    value_width = table["value_high"] - table["value_low"]
    for baseline in ("random", "all A"):
        assert diff_width[baseline] < np.hypot(value_width["policy"], value_width[baseline]), baseline


def test_qini_ranks_perfect_above_random():
    data = experiment(6000, seed=4)
    rows = np.isin(data["arm"], ["A", "none"])
    flag, y = data["arm"][rows] == "A", data["y"][rows]
    truth, noise = data["tau"]["A"][rows], np.random.default_rng(1).normal(size=rows.sum())
    # Normalised by the perfect ranking of these noisy outcomes, so even the true effect scores well below 1.
    perfect, random = uplift.qini_auc(truth, flag, y), uplift.qini_auc(noise, flag, y)
    assert perfect > 0.05 and perfect > 4 * abs(random)
    curve = uplift.qini_curve(truth, flag, y)
    assert curve.iloc[0].tolist() == [0, 0.0, 0.0]
    total = y[flag].sum() - y[~flag].sum() * flag.sum() / (~flag).sum()
    assert curve["qini"].iloc[-1] == pytest.approx(total)
    assert uplift.qini_auc(y * flag - y * ~flag, flag, y) == pytest.approx(1.0)


def test_qini_treats_tied_scores_as_one_step():
    flag = np.array([1, 0, 1, 0])
    curve = uplift.qini_curve([0.5, 0.5, 0.1, 0.1], flag, [1, 0, 0, 1])
    assert curve["n"].tolist() == [0, 2, 4]


def test_uplift_at_k_by_hand():
    score = [0.9, 0.8, 0.7, 0.6, 0.1, 0.0]
    flag = [1, 0, 1, 0, 1, 0]
    y = [1, 0, 1, 1, 0, 1]
    assert uplift.uplift_at_k(score, flag, y, k=0.5) == pytest.approx(1.0 - 0.0)  # top 3: treated 1, 1; control 0
    assert uplift.uplift_at_k(score, flag, y, k=0.5, strategy="by_group") == pytest.approx(1.0 - 0.0)


def test_cross_fit_scores_every_row_out_of_fold(train):
    oof = uplift.cross_fit(
        lambda: MultiArmUplift(calibrate=False), train["X"], train["arm"], train["y"], control="none"
    )
    assert oof.index.equals(train["X"].index) and list(oof.columns) == ["none", "A", "B"]
    assert oof.notna().all().all()
    folds = uplift.fold_ids(train["arm"], 2, 0)
    assert set(folds) == {0, 1} and abs((folds == 0).mean() - 0.5) < 0.01
    policy = uplift.recommend_from_outcomes(oof, "none", COSTS)
    assert net_gain(policy, train["tau"], COSTS) > 0.8 * net_gain(train["oracle"], train["tau"], COSTS)


def test_qini_chart_draws_each_curve():
    data = experiment(2000, seed=6)
    flag = data["arm"] == "A"
    curves = {"truth": uplift.qini_curve(data["tau"]["A"], flag, data["y"])}
    fig = uplift.qini_chart(curves)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels[0] == "truth" and len(labels) == 3  # the curve, its random-targeting diagonal, the zero line


# ---------------------------------------------------------------- generic customer tables


def customer_table(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, pd.Series]:
    rng = np.random.default_rng(seed)
    plan = rng.choice(np.array(["basic", "pro", "enterprise", None], dtype=object), n)
    frame = pd.DataFrame(
        {
            "Plan Type": pd.Series(plan, dtype="category"),
            "tenure (months)": np.where(rng.random(n) < 0.1, np.nan, rng.integers(1, 60, n)),
            "is:active": rng.choice(np.array(["Yes", "No", None], dtype=object), n),
            "score[0]": rng.normal(size=n),
            "signup date": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 365, n), unit="D"),
            "vip": rng.random(n) < 0.2,
            7: rng.choice(np.array(["1", "2", "3"], dtype=object), n),
        }
    )
    arm = rng.choice(np.array(["none", "email", "sms", "call"], dtype=object), n)
    p = 0.2 + 0.15 * (arm == "call") * (plan == "pro") + 0.05 * (arm == "email")
    return frame, arm, pd.Series(np.where(rng.random(n) < p, "Yes", "No"))


def test_generic_table_runs_end_to_end():
    X, arm, converted = customer_table(4000, seed=0)
    model = MultiArmUplift().fit(X, arm, converted, control="none")
    assert model.binary_ and model.arms_ == ["none", "call", "email", "sms"]
    new, _, _ = customer_table(500, seed=1)
    new.loc[new.index[:5], "Plan Type"] = np.nan
    new["Plan Type"] = new["Plan Type"].cat.add_categories(["brand-new plan"])
    new.loc[new.index[5:10], "Plan Type"] = "brand-new plan"
    outcomes = model.predict_outcomes(new)
    assert outcomes.shape == (500, 4) and outcomes.notna().all().all()
    assert outcomes.to_numpy().min() > -0.2 and outcomes.to_numpy().max() < 1.2
    shuffled = new[list(reversed(new.columns))]
    pd.testing.assert_frame_equal(model.predict_outcomes(shuffled), outcomes)
    recommended = model.recommend(new, {"call": 0.05, "email": 0.01, "sms": 0.01})
    assert set(recommended) <= set(model.arms_)
    table = uplift.paired_bootstrap(converted, arm, model.recommend(X), model.propensity_of(arm), n_boot=100)
    assert {"policy", "all none", "all call", "all email", "all sms", "random"} == set(table.index)


def test_features_are_prepared_the_same_at_fit_and_predict():
    X, _, _ = customer_table(300, seed=2)
    matrix, spec = uplift.prepare_features(X)
    assert spec.names == ("Plan_Type", "tenure_months", "is_active", "score_0", "signup_date", "vip", "7")
    assert dict(zip(spec.columns, spec.kinds, strict=True)) == {
        "Plan Type": "category",
        "tenure (months)": "numeric",
        "is:active": "flag",
        "score[0]": "numeric",
        "signup date": "datetime",
        "vip": "flag",
        "7": "numeric",
    }
    assert set(spec.categories["Plan Type"]) == {"basic", "pro", "enterprise"}
    assert matrix["Plan_Type"].isna().any() and matrix["is_active"].isna().any()
    assert set(matrix["is_active"].dropna()) == {0.0, 1.0}
    again = uplift.transform_features(X.head(10), spec)
    assert list(again.columns) == list(matrix.columns)
    assert list(again["Plan_Type"].cat.categories) == list(matrix["Plan_Type"].cat.categories)
    with pytest.raises(KeyError, match="missing"):
        uplift.transform_features(X.drop(columns=["vip"]), spec)


def test_lightgbm_reads_the_row_major_matrix_as_the_frame():
    """`lgb_matrix` is what LightGBM makes of the prepared frame (categories by code, unseen and missing levels
    NaN): predictions and contributions on it equal LightGBM's own on the frame."""
    import lightgbm as lgb

    X, _, converted = customer_table(600, seed=4)
    matrix, spec = uplift.prepare_features(X)
    model = lgb.LGBMRegressor(n_estimators=30, min_child_samples=5, verbose=-1)
    model.fit(matrix, uplift.to_outcome(converted))
    new = X.head(200).astype({"Plan Type": object})
    new.loc[new.index[:20], "Plan Type"] = "unseen plan"
    frame = uplift.transform_features(new, spec)
    rows = uplift.lgb_matrix(frame)
    assert rows.flags["C_CONTIGUOUS"] and np.isnan(rows[:20, 0]).all()
    np.testing.assert_array_equal(uplift.lgb_rows(new, spec), rows)
    np.testing.assert_array_equal(model.predict(rows), model.predict(frame))
    np.testing.assert_array_equal(model.predict(rows, pred_contrib=True), model.predict(frame, pred_contrib=True))


def test_category_levels_match_text_and_values_alike():
    spec = uplift.FeatureSpec(("plan",), ("plan",), ("category",), {"plan": ("1", "pro", "basic")})
    for values in (["pro", None, "basic", "gold"], [1, None, "pro", 2.5], pd.Series(["pro", None], dtype="string")):
        matrix = uplift.transform_features(pd.DataFrame({"plan": values}), spec)
        expected = [None if v is None or pd.isna(v) or str(v) not in ("1", "pro", "basic") else str(v)
                    for v in values]
        assert [None if pd.isna(v) else v for v in matrix["plan"]] == expected
        assert list(matrix["plan"].cat.categories) == ["1", "pro", "basic"]


def test_outcomes_accept_yes_no_and_booleans():
    assert uplift.to_outcome(["Yes", "no", None, "TRUE"]).tolist()[:2] == [1.0, 0.0]
    assert uplift.to_outcome(pd.Series([True, False])).tolist() == [1.0, 0.0]
    assert uplift.to_outcome(["1.5", "2"]).tolist() == [1.5, 2.0]


def test_control_must_be_an_assigned_arm(train):
    with pytest.raises(ValueError, match="control arm"):
        MultiArmUplift().fit(train["X"], train["arm"], train["y"], control="nobody")


# ---------------------------------------------------------------- Hillstrom floors (README)


@pytest.fixture(scope="module", params=["spend", "conversion"])
def hillstrom(request):
    if not HILLSTROM.exists():
        pytest.skip(f"Hillstrom CSV not found at {HILLSTROM} (shared data lives beside the repo at ../shared/data)")
    from c360.training.hillstrom import evaluate_hillstrom

    return evaluate_hillstrom(HILLSTROM, outcome=request.param, seed=0, n_boot=300)


def test_hillstrom_policy_beats_weak_baselines_and_matches_all_mens(hillstrom):
    policies = hillstrom["policies"]
    for baseline in ("random", "all Womens E-Mail", "all No E-Mail"):
        assert policies[baseline]["policy_better"], (baseline, policies[baseline])
    low, high = policies["all Mens E-Mail"]["diff_ci"]
    assert low < 0 < high, policies["all Mens E-Mail"]


def test_hillstrom_ranking_signal(hillstrom):
    visit = hillstrom["qini_auc"]["visit"]
    assert visit["Womens E-Mail"] > 0.03
    assert abs(visit["Mens E-Mail"]) < 0.03
    assert abs(hillstrom["uplift_at_30"]["value"] - 0.0661) < 0.03


def test_sample_weights_weigh_the_average_effect_and_default_to_unweighted():
    """Two kinds of customers the features cannot tell apart: the arm gains 1 for the heavy ones and loses 1 for the
    light ones. Unweighted the average effect is about -0.6 (four light ones to one heavy); weighted by stake 9 to 1
    it is about +0.4. Unit weights change nothing."""
    rng = np.random.default_rng(3)
    n = 8000
    heavy = rng.random(n) < 0.2
    t = np.where(rng.random(n) < 0.5, "arm", "none")
    y = rng.normal(0, 0.5, n) + (t == "arm") * np.where(heavy, 1.0, -1.0)
    X = pd.DataFrame({"x": rng.normal(size=n)})
    weight = np.where(heavy, 9.0, 1.0)
    fit = lambda w: MultiArmUplift(n_estimators=20).fit(X, t, y, control="none", sample_weight=w)  # noqa: E731
    plain, ones, weighted = fit(None), fit(np.ones(n)), fit(weight)
    assert plain.predict_uplift(X)["arm"].mean() == pytest.approx(-0.6, abs=0.1)
    assert weighted.predict_uplift(X)["arm"].mean() == pytest.approx(0.4, abs=0.1)
    pd.testing.assert_frame_equal(plain.predict_outcomes(X), ones.predict_outcomes(X))


def test_choose_picks_the_best_allowed_arm_and_marks_the_better_ones_withheld() -> None:
    from c360.training.uplift import choose

    net = pd.DataFrame({"none": [0.0, 0.0, 0.0], "mail": [5.0, 5.0, -1.0], "call": [3.0, -2.0, 1.0]})
    allowed = pd.DataFrame({"mail": [False, False, False], "call": [True, True, False]})
    free = choose(net, "none")
    assert list(free.best) == ["mail", "mail", "call"] and not free.withheld.to_numpy().any()
    held = choose(net, "none", allowed)
    assert list(held.best) == ["call", "none", "none"]
    assert list(held.score) == [3.0, 0.0, 0.0]
    assert held.withheld.to_dict("list") == {"none": [False] * 3, "mail": [True, True, False],
                                             "call": [False, False, True]}
    assert list(held.explained) == ["call", "call", "none"], "reasons explain an allowed arm, or none"


def test_calibration_reads_only_the_randomized_rows():
    """A randomized test beside rows a policy assigned on the feature (A wherever x > 0): A's true average effect
    is P(x > 0.25) = 0.375, but on the policy's rows the arm goes with the effect. Calibrated on the randomized rows
    alone, the average effect is right; on all rows as if randomized it is pulled towards the treated ones'."""
    test, picked = experiment(6000, seed=4), experiment(6000, seed=5)
    keep = picked["arm"] != "B"
    policy_arm = np.where(picked["X"]["x"] > 0, "A", "none").astype(object)[keep]
    y = picked["y"][keep] - np.where(picked["arm"][keep] == "A", picked["tau"]["A"][keep], 0.0) \
        + np.where(policy_arm == "A", picked["tau"]["A"][keep], 0.0)
    X = pd.concat([test["X"], picked["X"][keep]], ignore_index=True)
    t, outcome = np.concatenate([test["arm"], policy_arm]), np.concatenate([test["y"], y])
    randomized = np.arange(len(X)) < len(test["X"])
    effect = {flags is None: MultiArmUplift(seed=1).fit(X, t, outcome, control="none", randomized=flags)
              .calibration_["A"][0] for flags in (randomized, None)}
    assert effect[False] == pytest.approx(0.375, abs=0.1), effect
    assert abs(effect[False] - 0.375) < abs(effect[True] - 0.375), effect
