"""Advancing a generated world: nothing written before changes, the same inputs give the same step, the batch loads
clean, the events say what the batch says, and churn and the actions' effects follow the ground truth."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from c360.cli.main import app
from c360.core import contract
from c360.core.contract import EVENT_KINDS, EVENTS_BY_KIND, TABLES
from c360.features.advance import AdvanceError, advance, with_account_ids
from c360.features.generate import generate
from c360.features.ingest import ingest
from c360.features.synth.world import DISCOUNT, EFFECT_WEEKS, END, PRICE

CUSTOMERS, SEED, WEEKS = 1000, 21, EFFECT_WEEKS  # 13 weeks: the horizon of the truth's 90-day churn risk
BATCH = f"_{END.date()}"


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def within(realized: float, p: np.ndarray, sigmas: float = 3.0) -> tuple[bool, str]:
    """Whether a count of Bernoulli outcomes is within `sigmas` binomial standard errors of its expectation."""
    expected, se = p.sum(), np.sqrt((p * (1 - p)).sum())
    return abs(realized - expected) <= sigmas * se, f"realized {realized}, expected {expected:.1f} ± {se:.1f}"


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two copies of one world, each advanced by the same 13 weeks with the same actions: a random half of the
    accounts subscribed at the end get a discount, a few others a CSM call or a training invite."""
    root = tmp_path_factory.mktemp("advance")
    generate(root / "a", CUSTOMERS, seed=SEED, chunk_size=400)
    before = digests(root / "a")
    shutil.copytree(root / "a", root / "b")
    shutil.copytree(root / "a", root / "c")
    customers = pd.read_parquet(root / "a" / "ground_truth" / "customers.parquet")
    alive = customers.loc[customers["alive_at_end"], "account_id"].to_numpy()
    rng = np.random.default_rng(0)
    chosen = rng.permutation(alive)
    half = len(chosen) // 2
    actions = pd.DataFrame({"account_id": chosen[: half + 40],
                            "action": ["discount"] * half + ["csm_call"] * 20 + ["training_invite"] * 20})
    reports = {name: advance(root / name, WEEKS, actions, out=root / name, events=root / f"{name}.jsonl")
               for name in "ab"}
    advance(root / "c", WEEKS, actions, out=root / "c_batch")  # the same step into an empty folder
    return {"root": root, "before": before, "actions": actions, "reports": reports}


def truth(worlds: dict, name: str) -> pd.DataFrame:
    return pd.read_parquet(worlds["root"] / "a" / "ground_truth" / f"advance_{END.date()}_{name}.parquet")


def test_old_files_stay_byte_identical_and_the_same_inputs_give_the_same_step(worlds: dict) -> None:
    root = worlds["root"]
    after = digests(root / "a")
    assert {k: after[k] for k in worlds["before"]} == worlds["before"]
    new = sorted(set(after) - set(worlds["before"]))
    assert any(k.endswith(f"tickets{BATCH}.csv") for k in new) and any("advance_" in k for k in new)
    assert after == digests(root / "b")
    assert (root / "a.jsonl").read_bytes() == (root / "b.jsonl").read_bytes()


def test_a_batch_into_an_empty_folder_is_the_batch_beside_the_exports(worlds: dict) -> None:
    """Snapshot tables arrive whole wherever the batch goes: else ingest would take the rows missing from a
    subscriptions file as deleted."""
    root = worlds["root"]
    batch = digests(root / "c_batch")
    assert any(k.endswith(f"subscriptions{BATCH}.csv") for k in batch)
    assert batch == {k: v for k, v in digests(root / "a").items() if k in batch}


@pytest.mark.filterwarnings("ignore::c360.features.ingest.IngestWarning")  # the ground truth's files
def test_the_batch_loads_without_quarantine_and_a_closed_ticket_replaces_its_open_row(worlds: dict) -> None:
    world = worlds["root"] / "a"
    con = duckdb.connect()
    reports = ingest(con, world)
    assert con.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 0
    assert sum(r.accepted for r in reports if BATCH in r.file.name) == sum(worlds["reports"]["a"].rows.values())
    batch = pd.read_csv(world / "support" / f"tickets{BATCH}.csv", dtype=str)
    old = pd.read_csv(world / "support" / "tickets.csv", dtype=str)
    closed = batch[batch["ticket_id"].isin(old["ticket_id"])]
    assert len(closed) and closed["closed_at"].notna().all()
    rows = con.execute("SELECT ticket_id, status, closed_at IS NOT NULL FROM support_tickets WHERE ticket_id IN "
                       "(SELECT * FROM unnest($k))", {"k": closed["ticket_id"].tolist()}).fetchall()
    assert len(rows) == len(closed) and all(status in ("solved", "closed") and shut for _, status, shut in rows)
    assert con.execute("SELECT count(*) = count(DISTINCT ticket_id) FROM support_tickets").fetchone()[0]


def _typed(df: pd.DataFrame, table: contract.Table) -> pd.DataFrame:
    """Rows as the contract types them, sorted by key: the same content, whatever shape it came in."""
    out = pd.DataFrame(index=df.index)
    for c in table.columns:
        values = df[c.name] if c.name in df else pd.Series(None, index=df.index, dtype=object)
        if c.kind == "datetime":
            out[c.name] = pd.to_datetime(values)
        elif c.kind in ("int", "float"):
            out[c.name] = pd.to_numeric(values).astype("Float64")
        else:
            out[c.name] = values.astype("string")
    return out.sort_values(table.key, ignore_index=True)


def test_the_events_fold_into_the_batch_rows(worlds: dict) -> None:
    """Each event sets its row (an update replaces it), `at` filling the kind's column and the kind its fixed
    columns: the last state of every key is the batch's row."""
    lines = (worlds["root"] / "a.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert len({e["event_id"] for e in events}) == len(events) == worlds["reports"]["a"].events
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    rows: dict[str, dict[str, dict]] = {}
    for e in events:
        kind = EVENTS_BY_KIND[e["kind"]]
        table = contract.table(kind.table)
        row = {k: v for k, v in e.items() if k not in ("event_id", "kind", "at")}
        row.update(dict(kind.fixed))
        if kind.at:
            row[kind.at] = e["at"]
        if table.key == "event_id":
            row["event_id"] = e["event_id"]
        rows.setdefault(table.id, {})[row[table.key]] = row
    world = worlds["root"] / "a"
    batch = {t.id: pd.read_csv(world / t.silo / f"{t.name}{BATCH}.csv", dtype=str) for t in TABLES
             if (world / t.silo / f"{t.name}{BATCH}.csv").is_file()}
    assert {t for t in batch if contract.table(t).arrives == "increment"} <= rows.keys() <= batch.keys()
    for table_id, df in batch.items():
        table = contract.table(table_id)
        if table.arrives == "snapshot":  # the whole table: the rows the step changed are the events' rows
            df = df[df[table.key].isin(list(rows.get(table_id, {})))]
            if df.empty:
                continue
        folded = pd.DataFrame(list(rows[table_id].values())).astype({table.key: str})
        pd.testing.assert_frame_equal(_typed(folded, table), _typed(df, table), obj=table_id)


def test_every_event_kind_carries_no_column_named_like_the_envelope() -> None:
    for k in EVENT_KINDS:
        carried = set(contract.table(k.table).column_names) - {k.at, *(c for c, _ in k.fixed)}
        assert not carried & {"kind", "at"}, k.name
        assert "event_id" not in carried or contract.table(k.table).key == "event_id", k.name


def test_churn_in_the_new_weeks_follows_the_truth(worlds: dict) -> None:
    """Untreated accounts churn exactly when the world's ground truth says, as often as the truth's 90-day risk
    at the end expects (within 3 binomial standard errors), and as their own weekly hazard makes likely."""
    out = truth(worlds, "outcomes")
    untreated = out[out["action"].isna()]
    customers = pd.read_parquet(worlds["root"] / "a" / "ground_truth" / "customers.parquet").set_index("account")
    assert (untreated["churn_week"].to_numpy() == customers.loc[untreated["account"], "churn_week"].to_numpy()).all()
    risk = pd.read_parquet(worlds["root"] / "a" / "ground_truth" / "churn_risk.parquet")
    risk = risk[risk["as_of"] == END].set_index("account")["p_churn_90d"]
    assert set(out["account"]) == set(risk.index)
    ok, why = within(int(untreated["churned"].sum()), risk.loc[untreated["account"]].to_numpy())
    assert ok, why
    ok, why = within(int(out["churned"].sum()), out["p_churn"].to_numpy())
    assert ok, why
    assert 0 < out["churned"].sum() < len(out)


def test_treated_accounts_follow_the_true_effects(worlds: dict) -> None:
    """A discount lowers churn where the truth says it helps (the same churn draw without it is the matched
    counterfactual), raises it where it hurts, and the treated churn as often as the truth's effects expect."""
    out = truth(worlds, "outcomes").set_index("account")
    effects = truth(worlds, "effects")
    assert effects["assigned"].sum() == len(worlds["actions"])
    given = worlds["actions"].set_index("account_id")["action"]
    treated = out[out["action"].notna()]
    assert (treated["action"].to_numpy() == given.loc[treated["account_id"]].to_numpy()).all()
    assert len(treated) > 0.95 * len(given)  # the few others churned in the week the actions were taken
    p = effects.pivot(index="account", columns="action", values="p_churn_90d")
    disc = out[out["action"] == "discount"]
    helps = p.loc[disc.index, "discount"] < p.loc[disc.index, "no_action"]
    assert 0 < helps.sum() < len(disc)
    good, bad = disc[helps.to_numpy()], disc[~helps.to_numpy()]
    assert (good["p_churn"] < good["p_churn_untreated"]).all()
    assert (bad["p_churn"] > bad["p_churn_untreated"]).all()
    assert (good["churned"] <= good["churned_untreated"]).all()
    assert (bad["churned"] >= bad["churned_untreated"]).all()
    ok, why = within(int(disc["churned"].sum()), p.loc[disc.index, "discount"].to_numpy())
    assert ok, why


def test_actions_show_in_the_silos(worlds: dict) -> None:
    """A CSM call is a logged phone call, every action a send of its arm's campaign, a discount a smaller invoice."""
    world, actions = worlds["root"] / "a", worlds["actions"]
    read = lambda silo, name: pd.read_csv(world / silo / f"{name}{BATCH}.csv", dtype=str)  # noqa: E731
    calls = read("crm", "activities")
    calls = calls[calls["topic"] == "check-in call"]
    assert set(calls["account_id"]) == set(actions.loc[actions["action"] == "csm_call", "account_id"])
    sends, campaigns = read("marketing", "sends"), read("marketing", "campaigns")
    arms = sends.merge(campaigns, on="campaign_id")
    assert arms["action"].notna().sum() == len(actions)
    assert set(arms["action"].dropna()) == set(actions["action"])
    # a subscription invoice bills the plan's price per seat, a fifth off from the week after a discount
    customers = pd.read_parquet(world / "ground_truth" / "customers.parquet").set_index("account_id")
    discounted = set(customers.loc[actions.loc[actions["action"] == "discount", "account_id"], "billing_account_id"])
    invoices = read("billing", "invoices")
    invoices = invoices[invoices["kind"] == "subscription"]
    off = invoices["billing_account_id"].isin(discounted) & (pd.to_datetime(invoices["issued_at"])
                                                             >= END + pd.Timedelta(weeks=1))
    full = invoices["plan"].map(PRICE) * invoices["seats"].astype(int)
    assert off.sum() > 100
    assert np.allclose(invoices["amount"].astype(float), (full * np.where(off, 1 - DISCOUNT, 1.0)).round(2))


def test_bad_requests_are_clear_errors(worlds: dict, tmp_path: Path) -> None:
    world = tmp_path / "w"
    shutil.copytree(worlds["root"] / "a", world)
    with pytest.raises(AdvanceError, match="52 weeks past its end"):
        advance(world, 40, out=world)
    with pytest.raises(AdvanceError, match="unknown action"):
        advance(world, 1, pd.DataFrame({"account": [1], "action": ["refund"]}), out=world)
    with pytest.raises(AdvanceError, match="account the world does not have"):
        advance(world, 1, pd.DataFrame({"account_id": ["ACC-nobody"], "action": ["discount"]}), out=world)
    with pytest.raises(AdvanceError, match="no generated world"):
        advance(tmp_path / "none", 1, out=tmp_path)


def test_cli_advances_the_world_again_and_says_so(worlds: dict, home: Path, tmp_path: Path) -> None:
    """`c360 advance` carries on where the last advance ended; errors are one line."""
    world = tmp_path / "w"
    shutil.copytree(worlds["root"] / "a", world)
    runner = CliRunner()
    result = runner.invoke(app, ["advance", "--weeks", "2", "--from", str(world), "--events",
                                 str(tmp_path / "e.jsonl"), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    start = (END + pd.Timedelta(weeks=WEEKS)).date()
    assert report["start"] == str(start) and report["rows"] == {} and report["events"] > 0
    assert (world / "ground_truth" / f"advance_{start}.json").is_file()
    assert not list(world.glob(f"*/*_{start}.csv"))
    result = runner.invoke(app, ["advance", "--weeks", "99", "--from", str(world)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "more at most" in result.output.replace("\n", " ")


def test_actions_may_name_c360_customers_through_the_crosswalk() -> None:
    con = duckdb.connect()
    con.execute("CREATE TABLE identity_crosswalk (source VARCHAR, source_key VARCHAR, customer_id VARCHAR)")
    con.execute("INSERT INTO identity_crosswalk VALUES ('crm/accounts', 'ACC-2', 'C1'), ('crm/contacts', 'CON-1', "
                "'C1'), ('crm/accounts', 'ACC-9', 'C2')")
    mapped = with_account_ids(con, pd.DataFrame({"customer_id": ["C2", "C1"], "action": ["discount", "csm_call"]}))
    assert mapped.to_dict("records") == [{"action": "discount", "account_id": "ACC-9"},
                                         {"action": "csm_call", "account_id": "ACC-2"}]
    with pytest.raises(AdvanceError, match="1 customer id"):
        with_account_ids(con, pd.DataFrame({"customer_id": ["C3"], "action": ["discount"]}))


def test_a_usage_drop_thins_the_regions_product_events_and_changes_nothing_else(tmp_path: Path) -> None:
    """The shift draws from a stream of its own: the shifted step's files are the plain step's, but for the product
    events of the region's users, about USAGE_DROP of which are gone; a later step carries the shift on."""
    from c360.features.synth.advance import USAGE_DROP, Shift

    generate(tmp_path / "plain", 400, seed=3, chunk_size=200)
    shutil.copytree(tmp_path / "plain", tmp_path / "shifted")
    advance(tmp_path / "plain", 4, out=tmp_path / "plain")
    advance(tmp_path / "shifted", 4, out=tmp_path / "shifted", shift=Shift.parse("usage-drop:EMEA"))
    plain, shifted = digests(tmp_path / "plain"), digests(tmp_path / "shifted")
    differ = {k for k in plain if plain[k] != shifted.get(k)}
    assert differ == {f"product/events{BATCH}.csv", f"ground_truth/advance_{END.date()}.json"}, differ
    truth = tmp_path / "plain" / "ground_truth"
    region = pd.read_parquet(truth / "records.parquet").query("table_id == 'product/users'").merge(
        pd.read_parquet(truth / "customers.parquet")[["account", "region"]], on="account").set_index("key")["region"]
    events = {name: pd.read_csv(tmp_path / name / "product" / f"events{BATCH}.csv", dtype=str)
              for name in ("plain", "shifted")}
    for frame in events.values():
        frame["region"] = frame["user_id"].map(region)
    kept = events["shifted"].groupby("region").size() / events["plain"].groupby("region").size()
    assert kept.drop("EMEA").eq(1).all(), kept
    assert kept["EMEA"] == pytest.approx(1 - USAGE_DROP, abs=0.03)
    assert set(events["shifted"]["event_id"]) <= set(events["plain"]["event_id"])
    advance(tmp_path / "shifted", 4, out=tmp_path / "shifted")
    manifests = sorted((tmp_path / "shifted" / "ground_truth").glob("advance_*.json"))
    assert [json.loads(p.read_text())["shift"] for p in manifests] == ["usage-drop:EMEA"] * 2
    with pytest.raises(ValueError, match="unknown shift"):
        Shift.parse("usage-drop:MARS")
