"""The generator: deterministic, messy like life, and its ground truth agrees with the data it wrote."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from c360.core.contract import ACTIONS, TABLES
from c360.features.generate import generate
from c360.features.synth import people
from c360.features.synth.world import END, START


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_files_other_seed_other_files(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate(tmp_path / name, 300, seed=seed, corrupt_rate=0.01, chunk_size=120)
    a, b, c = (digests(tmp_path / n) for n in "abc")
    assert a == b
    assert a.keys() == c.keys() and a["crm/accounts.csv"] != c["crm/accounts.csv"]


def test_every_table_is_written_with_the_contract_header(company: Path) -> None:
    for t in TABLES:
        header = (company / t.silo / f"{t.name}.csv").open().readline().strip()
        assert header.replace('"', "").split(",") == t.column_names, t.id


def test_one_in_five_people_has_a_second_record_in_some_silo(company: Path) -> None:
    records = pd.read_parquet(company / "ground_truth" / "records.parquet")
    people_tables = records[records["table_id"].isin(["crm/contacts", "product/users", "marketing/contacts"])]
    per_table = people_tables.groupby(["person", "table_id"]).size().unstack(fill_value=0)
    share = (per_table.max(axis=1) > 1).mean()
    assert 0.15 <= share <= 0.25


def test_records_of_one_person_differ_across_silos(company: Path) -> None:
    """Identity must be messy: the same person is not written the same way everywhere."""
    records = pd.read_parquet(company / "ground_truth" / "records.parquet")
    contacts = pd.read_csv(company / "crm" / "contacts.csv", dtype=str)
    users = pd.read_csv(company / "product" / "users.csv", dtype=str)
    who = records.set_index("key")["person"]
    a = contacts.assign(person=contacts["contact_id"].map(who)).dropna(subset=["person"])
    b = users.assign(person=users["user_id"].map(who)).dropna(subset=["person"])
    pairs = a.merge(b, on="person", suffixes=("_crm", "_product"))
    same_email = (pairs["email_crm"].str.lower() == pairs["email_product"].str.lower()).mean()
    assert 0.6 < same_email < 0.98


def test_true_hazard_is_calibrated_against_observed_churn(clean_company: Path) -> None:
    """Customers the truth calls risky do churn more, and as often as the truth says."""
    truth = clean_company / "ground_truth"
    risk = pd.read_parquet(truth / "churn_risk.parquet")
    customers = pd.read_parquet(truth / "customers.parquet")
    as_of = START + pd.Timedelta(weeks=52)
    at = risk[risk["as_of"] == as_of].merge(customers[["account", "churn_date"]], on="account")
    churned = (at["churn_date"] > as_of) & (at["churn_date"] <= as_of + pd.Timedelta(weeks=13))
    top = at["p_churn_90d"] >= at["p_churn_90d"].quantile(0.75)
    bottom = at["p_churn_90d"] <= at["p_churn_90d"].quantile(0.25)
    assert churned[top].mean() > 3 * churned[bottom].mean()
    se = np.sqrt((at["p_churn_90d"] * (1 - at["p_churn_90d"])).sum()) / len(at)
    assert abs(churned.mean() - at["p_churn_90d"].mean()) < 4 * se


def test_experiment_arms_are_randomized_and_effects_show_in_outcomes(clean_company: Path) -> None:
    effects = pd.read_parquet(clean_company / "ground_truth" / "treatment_effects.parquet")
    assigned = effects[effects["assigned"]]
    shares = assigned["action"].value_counts(normalize=True)
    assert set(shares.index) == set(ACTIONS)
    n = len(assigned)
    assert (abs(shares - 0.25) < 4 * np.sqrt(0.25 * 0.75 / n)).all()
    wide = effects.pivot_table(index=["account", "wave"], columns="action", values="p_churn_90d")
    lift = wide.sub(wide["no_action"], axis=0).drop(columns="no_action")
    assert (lift.std() > 0.005).all(), "effects must differ between customers"
    assert (lift.lt(0).mean() > 0.05).all() and (lift.gt(0).mean() > 0.05).all(), "each action helps some only"


def test_future_value_truth_matches_its_expectation(clean_company: Path) -> None:
    customers = pd.read_parquet(clean_company / "ground_truth" / "customers.parquet")
    alive = customers[customers["alive_at_end"]]
    realized, expected = alive["future_value_12m"].sum(), alive["expected_value_12m"].sum()
    assert realized == pytest.approx(expected, rel=0.05)
    assert customers.loc[~customers["alive_at_end"], "future_value_12m"].eq(0).all()


def test_consent_comes_from_its_own_stream_and_changes_no_other_file(tmp_path: Path) -> None:
    generate(tmp_path / "with", 300, seed=3, corrupt_rate=0.01, chunk_size=120)
    generate(tmp_path / "without", 300, seed=3, corrupt_rate=0.01, chunk_size=120, consent=False)
    with_, without = digests(tmp_path / "with"), digests(tmp_path / "without")
    added = {"marketing/consents.csv", "ground_truth/consent.parquet"}
    assert set(with_) - set(without) == added
    changed = {name for name in without if with_[name] != without[name]}
    assert changed == {"ground_truth/manifest.json"}, "only the manifest's list of files may change"
    rows = {name: json.loads((tmp_path / name / "ground_truth" / "manifest.json").read_text())["rows"]
            for name in ("with", "without")}
    assert {k: v for k, v in rows["with"].items() if k not in added} == rows["without"]


def test_most_grant_consent_and_unhappy_customers_opt_out_more(clean_company: Path) -> None:
    truth = pd.read_parquet(clean_company / "ground_truth" / "consent.parquet")
    customers = pd.read_parquet(clean_company / "ground_truth" / "customers.parquet").set_index("account")
    log = pd.read_csv(clean_company / "marketing" / "consents.csv", parse_dates=["changed_at"])
    assert (truth.groupby("purpose")["granted_at_end"].mean() > 0.6).all()
    withdrawn = log[(log["status"] == "withdrawn") & (log["source"] != "signup_form")]
    assert withdrawn["changed_at"].dt.year.nunique() >= 2, "opt-outs happen over time"
    assert log["changed_at"].max() < pd.Timestamp(END)
    email = truth[truth["purpose"] == "marketing_email"]
    opted_out = ~email.groupby("account")["granted_at_end"].any()
    health = customers.loc[opted_out.index, "base_health"]
    unhappy = health < health.quantile(0.25)
    assert opted_out[unhappy].mean() > 1.5 * opted_out[~unhappy].mean()


def test_age_bands_come_from_their_own_stream_and_change_nothing_else(tmp_path: Path) -> None:
    generate(tmp_path / "with", 300, seed=3, corrupt_rate=0.02, chunk_size=120)
    generate(tmp_path / "without", 300, seed=3, corrupt_rate=0.02, chunk_size=120, sensitive=False)
    with_, without = digests(tmp_path / "with"), digests(tmp_path / "without")
    assert set(with_) == set(without)
    changed = {name for name in without if with_[name] != without[name]}
    assert changed == {"crm/contacts.csv", "ground_truth/customers.parquet"}
    contacts = {name: pd.read_csv(tmp_path / name / "crm" / "contacts.csv", dtype=str, keep_default_na=False)
                for name in ("with", "without")}
    assert list(contacts["with"].columns) == [*contacts["without"].columns, "age_band"]
    pd.testing.assert_frame_equal(contacts["with"].drop(columns="age_band"), contacts["without"])
    truth = {name: pd.read_parquet(tmp_path / name / "ground_truth" / "customers.parquet")
             for name in ("with", "without")}
    pd.testing.assert_frame_equal(truth["with"].drop(columns="age_band"), truth["without"])


def test_only_consumers_have_an_age_band_and_it_follows_their_traits(clean_company: Path) -> None:
    customers = pd.read_parquet(clean_company / "ground_truth" / "customers.parquet")
    consumer = customers["segment"] == "consumer"
    assert customers.loc[consumer, "age_band"].notna().all() and customers.loc[~consumer, "age_band"].isna().all()
    shares = customers.loc[consumer, "age_band"].value_counts(normalize=True)
    assert set(shares.index) == set(people.AGE_BANDS) and shares.min() > 0.1
    adoption = customers[consumer].groupby("age_band")["adoption"].mean()
    assert adoption["18-29"] > adoption["60+"] + 0.03, "the young use more of the product"
    churned = customers[consumer].assign(churned=lambda f: ~f["alive_at_end"]).groupby("age_band")["churned"].mean()
    assert churned.max() - churned.min() < 0.15, "age moves no outcome by itself, only through the traits"


def test_the_age_band_is_no_model_input() -> None:
    """Every feature service serves features of the one table `BY_NAME`: a name missing there is fed to no model."""
    from c360.core.definitions import BY_NAME

    assert not [name for name in BY_NAME if "age" in name.split("_")], "models are judged by it, never fed it"
