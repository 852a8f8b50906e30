"""Personas: the same data gives the same personas and names, each name holds for its members, and the persona is
a field of the scores (audiences filter on it) and of the profile.

Fitting and scoring change the home, so these tests work on a copy of the served one, in order (the personas fitted
first are used later)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from c360.cli.main import app
from c360.core.settings import Settings
from c360.features import audiences, personas, store
from c360.serving import batch, online
from c360.serving.champions import Champions
from c360.serving.profile import profile
from tests.conftest import cli_json as invoke
from tests.serving.conftest import home_copy

runner = CliRunner()
WORD = {word: (feature, +1 if i == 0 else -1) for feature, words in personas.BEHAVIOUR.items()
        for i, word in enumerate(words)}


@pytest.fixture(scope="module")
def home(served: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with home_copy(served, tmp_path_factory.mktemp("personas")) as copy:
        yield copy


def snapshot(s: Settings) -> pd.DataFrame:
    return store.read_snapshot(s, store.snapshot_dates(s)[-1])


def test_show_before_fit_is_a_clear_error(home: Settings) -> None:
    result = runner.invoke(app, ["personas", "show"])
    assert result.exit_code == 1 and "c360 personas fit" in result.output


def test_fitting_twice_gives_the_same_personas(home: Settings) -> None:
    first = invoke("personas", "fit")
    second = invoke("personas", "fit")
    assert first["personas"] == second["personas"] and first["criterion"] == second["criterion"]
    assert first["k"] in personas.KS and first["criterion"]["k"] == first["k"]
    names = [p["persona"] for p in first["personas"]]
    assert len(set(names)) == len(names)
    sizes = [p["size"] for p in first["personas"]]
    assert sizes == sorted(sizes, reverse=True) and sum(sizes) == len(snapshot(home))
    assert invoke("personas", "show")["personas"] == first["personas"]
    assert not set(first["features"]) & {"segment", "region", "plan", "age_band"}


def test_each_name_holds_for_its_members(home: Settings) -> None:
    model = personas.load(home)
    assert model is not None
    frame = snapshot(home)
    assigned = personas.assign(model, frame)
    for name in model.names:
        members = frame[assigned == name]
        assert len(members) == model.sizes[model.names.index(name)]
        for word in name.split(" (")[0].split(", "):
            if word == "typical":
                continue
            feature, sign = WORD[word]
            column = pd.to_numeric(frame[feature], errors="coerce")
            difference = column[assigned == name].mean() - column.mean()
            assert np.sign(difference) == sign, (name, feature, difference)


def test_given_k_and_bad_k(home: Settings) -> None:
    assert invoke("personas", "fit", "--k", "3")["k"] == 3
    result = runner.invoke(app, ["personas", "fit", "--k", str(10**7)])
    assert result.exit_code == 1 and "k must be between" in result.output
    invoke("personas", "fit")


def test_scores_carry_the_persona_and_audiences_filter_on_it(home: Settings) -> None:
    model = personas.load(home)
    assert model is not None
    report = batch.score(home, chunk_size=1000)
    assert ".personas-" + model.digest in report.folder.name
    scores = pd.read_parquet(report.folder / "wide")
    frame = snapshot(home).set_index("customer_id").loc[scores["customer_id"]].reset_index()
    assert list(scores["persona"]) == list(personas.assign(model, frame))
    name = model.names[-1]  # the smallest
    where = "persona = '" + name.replace("'", "''") + "'"
    created = invoke("audience", "create", "persona_smallest", "--where", where)
    assert created["size"] == int((scores["persona"] == name).sum()) > 0
    assert audiences.members(home, "persona_smallest") == sorted(scores.loc[scores["persona"] == name, "customer_id"])


def test_the_profile_shows_the_persona(home: Settings) -> None:
    scores = pd.read_parquet(max(home.scores.glob("as_of=*/run=*.personas-*"), key=lambda p: p.stat().st_mtime)
                             / "wide")
    ctx = online.Context(home, store.feature_store(home), Champions.load(home.home))
    for row in scores.head(3).itertuples():
        assert profile(ctx, row.customer_id)["present"]["persona"] == row.persona
