"""Campaigns on one small generated home (600 customers, ingested and resolved, one feature snapshot, no models, so
fixed-action policies): complete randomization and its logged propensities, the global holdout, the removal rules,
the decision log as a personal-data store, and the loop plan → simulate → ingest → readout over 20 seeds (slow).

The tests of this module share the home and run in order; each loop test restores the warehouse and the world."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from c360.core import consent, personal, warehouse
from c360.core.contract import ACTIONS
from c360.core.personal import Person, Work
from c360.core.settings import Settings
from c360.features import audiences, campaigns, compute, identity, store
from c360.features.advance import with_account_ids
from c360.features.campaigns import CampaignError
from c360.features.generate import TRUTH, generate
from c360.features.ingest import ingest
from c360.training import readout
from c360.training.nba_pipeline import ACTION_COSTS

AUDIENCE = "subscribed"


def build(root: Path, customers: int, chunk_size: int) -> Settings:
    """A generated home, ingested and resolved, one feature snapshot and the audience of the subscribed; its
    warehouse kept aside as built (`fresh`)."""
    s = Settings(home=root / "home")
    generate(s.generated, customers, seed=3, chunk_size=chunk_size)
    with warehouse.connect(s) as con:
        ingest(con, s.generated)
        identity.resolve(con, s.home / "identity" / "model.json", threshold=0.95)
    with warehouse.connect(s, read_only=True) as con:
        store.write_snapshot(s, compute.build(con, warehouse.data_end(con)))
    audiences.create(s, AUDIENCE, "subscribed", "test")
    shutil.copyfile(s.warehouse, root / "pristine.duckdb")
    return s


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    s = build(tmp_path_factory.mktemp("campaigns"), 600, 25_000)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("C360_HOME", str(s.home))
        yield s


def fresh(s: Settings) -> None:
    """Back to the home as built: its warehouse, the world without advances, an empty decision log."""
    shutil.copyfile(s.home.parent / "pristine.duckdb", s.warehouse)
    for manifest in (s.generated / TRUTH).glob("advance_*.json"):
        start = manifest.stem.removeprefix("advance_")
        for file in [*s.generated.glob(f"*/*_{start}.csv"), *(s.generated / TRUTH).glob(f"advance_{start}*")]:
            file.unlink()
    campaigns.path(s).unlink(missing_ok=True)


def plan(s: Settings, name: str, **options) -> dict:
    return campaigns.plan(s, name, AUDIENCE, who="test", role="admin", **options)


# ---------------------------------------------------------------- randomization


def members(n: int, allowed: list[list[str]] | None = None) -> pd.DataFrame:
    return pd.DataFrame({"customer_id": [f"C{i:03d}" for i in range(n)], "policy_action": "discount",
                         "score": np.nan, "model_version": pd.NA,
                         "allowed": allowed or [list(ACTIONS)] * n, "channel": None})


def test_complete_randomization_gives_exact_counts() -> None:
    for n, holdout, explore in ((200, 0.1, 0.05), (37, 0.25, 0.2), (1000, 0.0, 0.5)):
        assigned = campaigns.assign(members(n), holdout, explore, np.random.default_rng(n))
        counts = assigned["arm"].value_counts()
        assert counts.get("holdout", 0) == round(holdout * n)
        assert counts.get("exploration", 0) == round(explore * n)
        assert (assigned.loc[assigned["arm"] == "holdout", "action"] == "no_action").all()


def test_logged_propensity_is_the_chance_of_the_action() -> None:
    """Over many randomizations, how often each member got its action matches the propensity logged with it; a
    member whose consent allows two actions only is explored over those two."""
    allowed = [list(ACTIONS)] * 9 + [["no_action", "discount"]]
    frame, draws = members(10, allowed), 3000
    runs = pd.concat([campaigns.assign(frame, 0.2, 0.3, np.random.default_rng(seed)) for seed in range(draws)])
    got = runs.groupby(["customer_id", "action"]).size().unstack(fill_value=0) / draws
    logged = runs.groupby(["customer_id", "action"])["propensity"].agg(["min", "max"])
    assert (logged["min"] == logged["max"]).all()  # one propensity per member and action
    assert np.allclose(got.stack().loc[logged.index], logged["min"], atol=0.03)
    assert got.loc["C009", ["training_invite", "csm_call"]].sum() == 0
    assert logged.loc[("C009", "discount"), "min"] == pytest.approx(0.5 + 0.3 / 2)  # policy 5 of 10, explored half of 3


def test_global_holdout_is_stable_per_home(small: Settings, tmp_path: Path) -> None:
    ids = [f"C{i:05d}" for i in range(20_000)]
    held = campaigns.in_global_holdout(small, ids)
    assert held.mean() == pytest.approx(small.global_holdout, abs=0.006)
    assert (campaigns.in_global_holdout(small, ids) == held).all()
    other = campaigns.in_global_holdout(Settings(home=tmp_path / "other"), ids)  # another home, another salt
    assert (other != held).any()


# ---------------------------------------------------------------- plans on the home


def test_plan_removes_the_global_holdout_and_opt_outs(small: Settings) -> None:
    fresh(small)
    ids = audiences.members(small, AUDIENCE)
    outside = [c for c, held in zip(ids, campaigns.in_global_holdout(small, ids), strict=True) if not held]
    consent.record(small, outside[0], "marketing_email")
    result = plan(small, "first", policy="discount", seed=1)
    assert result["removed"]["global_holdout"] == len(ids) - len(outside) > 0
    assert result["removed"]["opted_out"] >= 1
    logged = campaigns.assignments(small, "first")
    assert outside[0] not in set(logged["customer_id"])
    assert len(logged) == result["assigned"] == len(ids) - sum(result["removed"].values())
    assert abs(result["realized_shares"]["holdout"] - 0.1) <= 0.5 / len(logged) + 1e-9
    assert (logged["policy_action"] == "discount").all() and (logged["role"] == "admin").all()


def test_contact_cap_counts_earlier_campaigns(small: Settings) -> None:
    contacted = campaigns.assignments(small, "first").query("action != 'no_action'")["customer_id"]
    capped = Settings(home=small.home, contact_cap=1)
    result = campaigns.plan(capped, "second", AUDIENCE, policy="discount", seed=2, who="test", role="admin")
    assert result["removed"]["contact_cap"] == len(contacted)
    assert not set(campaigns.assignments(small, "second")["customer_id"]) & set(contacted)


def test_budget_bounds_the_contacts(small: Settings) -> None:
    result = plan(small, "budgeted", policy="training_invite", budget=50, seed=3, holdout=0.2)
    assert result["contacted"] <= 50 < result["assigned"]
    assert result["removed"]["budget"] > 0


def test_bad_plans_are_refused(small: Settings) -> None:
    for options, words in (({"policy": "flowers"}, "unknown policy"), ({"holdout": 0.7, "explore": 0.4}, "shares"),
                           ({"policy": "discount"}, "already named")):
        with pytest.raises(CampaignError, match=words):
            plan(small, "first", **options)
    with pytest.raises(audiences.UnknownAudience):
        campaigns.plan(small, "x", "nobody", policy="discount", who="test", role="admin")
    with pytest.raises(CampaignError, match="c360 score"):
        plan(small, "scoreless")  # --policy nba on a home without scores


def test_decision_log_is_a_personal_data_store(small: Settings) -> None:
    store_ = next(st for st in personal.STORES if st.name == "campaigns")
    assert personal.owner(small, campaigns.path(small)) is store_
    customer = campaigns.assignments(small, "first")["customer_id"].iloc[0]
    person = Person("customer_id", (customer,), (customer,), {}, (), ())
    with warehouse.connect(small, read_only=True) as con:
        work = Work(small, con)
        found = store_.function("export")(work, person)
        assert found and {row["customer_id"] for row in found} == {customer}
        erased = store_.function("erase")(work, person)
    assert erased.rows == len(found)
    assert store_.function("export")(Work(small, None), person) == []  # type: ignore[arg-type]
    assert customer.encode() not in campaigns.path(small).read_bytes()


# ---------------------------------------------------------------- the loop


def test_the_loop_without_scores(small: Settings, tmp_path: Path) -> None:
    """A fixed action on a home without models: simulated, ingested, read out; nothing to compare per decile."""
    fresh(small)
    planned = plan(small, "loop", policy="csm_call", holdout=0.3, explore=0.1, seed=7)
    simulated = campaigns.simulate(small, "loop", tmp_path, 13)
    assert (tmp_path / "campaign_loop_actions.csv").is_file() and 0 < simulated["treated"] <= planned["assigned"]
    with warehouse.connect(small) as con:
        ingest(con, tmp_path)
    result = readout.compute(small, "loop", n_boot=200)
    assert result["members"] == planned["assigned"]  # every member still in the warehouse
    assert result["sample_ratio"]["observed"] == {a: n for a, n in planned["arms"].items() if n}
    assert not result["sample_ratio"]["mismatch"] and result["gain_over_holdout"]["truth"] is not None
    assert result["uplift_by_decile"].empty
    assert result["churn"]["holdout_members"] == planned["arms"]["holdout"]
    assert result["net_value"]["costs"] == sum(ACTION_COSTS[a] * n for a, n in planned["actions"].items())


def test_simulate_refuses_a_home_without_a_world(tmp_path: Path) -> None:
    s = Settings(home=tmp_path / "home")
    with pytest.raises(CampaignError, match="no generated world"):
        campaigns.simulate(s, "any", tmp_path / "out", 13)


def test_readout_waits_for_the_outcomes(small: Settings) -> None:
    fresh(small)
    plan(small, "early", policy="discount", seed=4)
    with pytest.raises(readout.ReadoutError, match="not started"):
        readout.compute(small, "early")
    campaigns.launched(small, "early", "2030-01-01", 13)
    with pytest.raises(readout.ReadoutError, match="ingest the weeks after"):
        readout.compute(small, "early")


CHUNK = 200  # accounts per chunk of the generator: each has its own random streams, world and advance alike


@pytest.fixture(scope="module")
def chunked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """4,000 customers generated in 20 chunks of 200 accounts."""
    s = build(tmp_path_factory.mktemp("chunked"), 4000, CHUNK)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("C360_HOME", str(s.home))
        yield s


def chunk_of(s: Settings, frame: pd.DataFrame) -> np.ndarray:
    """The generator's chunk of each member's account."""
    with warehouse.connect(s, read_only=True) as con:
        named = with_account_ids(con, frame[["customer_id"]].assign(action="no_action"))
    numbers = pd.read_parquet(s.generated / TRUTH / "customers.parquet", columns=["account", "account_id"])
    return named["account_id"].map(numbers.set_index("account_id")["account"]).to_numpy() // CHUNK


@pytest.mark.slow
def test_readout_ci_covers_the_truth_over_seeds(chunked: Settings, tmp_path: Path) -> None:
    """60 replicates of assignment and outcome: per action, one campaign over the subscribed of a 4,000-customer
    company, simulated 13 weeks and ingested (about 20 s), read out per chunk of the generator. The chunks are
    independent worlds — each draws its accounts, their paths and the advance's outcomes from streams of its own —
    and their members' arms are distinct draws of the randomization, so each chunk is a replicate with its own
    assignment and outcome draws (advancing a world per seed instead would take a resolve each, about 15 s).
    Per replicate: does the 95 % CI of the gain over the holdout cover the ground truth's expected gain for those
    members? At least 85 % must."""
    covered, misses = 0, []
    for seed, policy in enumerate(("discount", "training_invite", "csm_call")):
        fresh(chunked)
        plan(chunked, policy, policy=policy, holdout=0.3, explore=0.1, seed=seed)
        campaigns.simulate(chunked, policy, tmp_path / policy, 13)
        with warehouse.connect(chunked) as con:
            ingest(con, tmp_path / policy)
        found = campaigns.campaign(chunked, policy)
        frame = readout.outcomes(chunked, campaigns.assignments(chunked, policy), *readout.window(chunked, found))
        effects = readout.effects_of(chunked, found)
        assert effects is not None
        chunks = chunk_of(chunked, frame)
        assert len(set(chunks)) == 20
        for k in sorted(set(chunks)):
            members = frame[chunks == k].reset_index(drop=True)
            gain = readout.policy_values(members, 400, int(k)).loc["all no_action"]
            truth = readout.truth_gain(chunked, members, effects)
            hit = gain["diff_low"] <= truth <= gain["diff_high"]
            covered += hit
            if not hit:
                misses.append((policy, int(k), round(gain["diff_low"]), round(gain["diff_high"]), round(truth)))
    assert covered >= 0.85 * 60, misses
