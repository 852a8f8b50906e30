import random
import re
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from c360.features import linkage
from c360.features.febrl import evaluate_febrl, load_febrl

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
FEBRL = DATA / "febrl"
needs_febrl = pytest.mark.skipif(
    not (FEBRL / "dataset4a.csv").exists() or not (FEBRL / "dataset4b.csv").exists(),
    reason=f"FEBRL 4a/4b not found in {FEBRL} (shared data lives beside the repo at ../shared/data)",
)


# ---------------------------------------------------------------- normalisation


@pytest.mark.parametrize("raw", ["+1 415 555 0100", "(415) 555-0100", "415.555.0100", "1-415-555-0100"])
def test_phone_formats_normalise_to_one_e164(raw):
    assert linkage.normalise_phone(raw) == "+14155550100"


def test_phone_uses_region_and_rejects_junk():
    assert linkage.normalise_phone("020 7946 0958", default_region="GB") == "+442079460958"
    assert linkage.normalise_phone("not a phone") is None
    assert linkage.normalise_phone(None) is None


def test_country_column_sets_phone_region_per_record():
    records = pd.DataFrame(
        {"record_id": ["1", "2"], "phone": ["020 7946 0958", "(415) 555-0100"], "country": ["GB", None]}
    )
    assert linkage.prepare_records(records)["phone"].tolist() == ["+442079460958", "+14155550100"]


@pytest.mark.parametrize(("nickname", "name"), [("Bob", "Robert"), ("bill", "WILLIAM"), ("Liz", "Elizabeth")])
def test_nicknames_share_a_canonical_first_name(nickname, name):
    assert linkage.canonical_first_name(nickname) == linkage.canonical_first_name(name) == name.lower()


def test_ambiguous_nickname_is_left_alone():
    assert linkage.canonical_first_name("Chris") == "chris"


def test_email_split_and_normalise():
    assert linkage.split_email(" Bob.Smith+news@Example.COM ") == ("bob.smith", "example.com")
    assert linkage.normalise_email("JANE@ACME.IO") == "jane@acme.io"
    assert linkage.split_email("jane@@acme.io") is None
    assert linkage.split_email("") is None


def test_name_and_text_normalisation():
    assert linkage.normalise_name("  José  O'Brien ") == "jose obrien"
    assert linkage.normalise_name(float("nan")) is None
    assert linkage.normalise_company("Acme, Inc.") == linkage.normalise_company("ACME") == "acme"
    assert linkage.normalise_street("12 Pinkerton Cct") == "12 pinkerton circuit"


def test_dates_normalise_to_iso_and_keep_typos():
    assert linkage.normalise_date("19151111") == "1915-11-11"
    assert linkage.normalise_date("1990-1-5") == "1990-01-05"
    assert linkage.normalise_date(date(1990, 1, 5)) == "1990-01-05"
    assert linkage.normalise_date("19151311") == "1915-13-11"  # impossible month kept for fuzzy comparison
    assert linkage.normalise_date(None) is None


def test_prepare_records_standard_and_helper_columns():
    records = pd.DataFrame(
        {"record_id": [1, 2], "source": ["crm", "billing"], "first_name": ["Bob", None],
         "suburb": ["Winston Hills", "x"], "email": ["Bob@X.com", "bad"]}
    )  # fmt: skip
    prepared = linkage.prepare_records(records)
    assert prepared["record_id"].tolist() == ["1", "2"]
    assert prepared["first_name_canon"].tolist() == ["robert", None]
    assert prepared["city"].tolist() == ["winston hills", "x"]
    assert prepared["email_domain"].tolist() == ["x.com", None]
    assert linkage.identity_columns(prepared) == ["first_name", "email", "city"]


def test_prepare_records_rejects_duplicate_ids():
    with pytest.raises(ValueError, match="unique"):
        linkage.prepare_records(pd.DataFrame({"record_id": ["a", "a"]}))


# ---------------------------------------------------------------- model specification


def test_blocking_rules_stay_selective():
    """A rule on one field only uses a near-unique field; every other rule ANDs two fields."""
    for rule in linkage.blocking_rules_for(linkage.IDENTITY_COLUMNS):
        terms = rule.split(" AND ")
        if len(terms) == 1:
            assert re.fullmatch(r'l\."(email|phone|soc_sec_id)" = r\."\1"', rule), rule


def test_rules_and_comparisons_follow_the_columns_present():
    crm = ["first_name", "surname", "email", "phone", "company"]
    rules = linkage.blocking_rules_for(crm)
    assert 'l."email" = r."email"' in rules
    assert not any("date_of_birth" in rule or "postcode" in rule for rule in rules)
    names = [c.create_output_column_name() for c in linkage.comparisons_for(crm)]
    assert names == crm


@pytest.mark.parametrize(
    "columns",
    [
        linkage.IDENTITY_COLUMNS,
        ["first_name", "surname", "date_of_birth", "street", "city", "postcode", "state"],
        ["first_name", "surname", "email", "phone", "company"],
    ],
)
def test_em_training_rules_leave_every_comparison_free_once(columns):
    rules = linkage.training_rules_for(columns)
    inputs = linkage._comparison_inputs(set(columns))
    for column in columns:
        assert any(not any(f'"{c}' in rule for c in inputs[column]) for rule in rules), column


# ---------------------------------------------------------------- evaluation


def _truth() -> pd.DataFrame:
    return pd.DataFrame({"record_id": list("abcde"), "entity_id": [1, 1, 1, 2, 2]})


def test_pairwise_metrics_by_hand():
    # True pairs: ab ac bc de (4). Predicted clusters {a,b} {c,d} {e}: pairs ab cd (2), of which ab is right.
    clusters = pd.DataFrame({"record_id": list("abcde"), "cluster_id": ["x", "x", "y", "y", "z"]})
    metrics = linkage.pairwise_metrics(clusters, _truth())
    assert (metrics["true_positive_pairs"], metrics["predicted_pairs"], metrics["true_pairs"]) == (1, 2, 4)
    assert metrics["precision"] == pytest.approx(1 / 2)
    assert metrics["recall"] == pytest.approx(1 / 4)
    assert metrics["f1"] == pytest.approx(1 / 3)  # 2 * 0.5 * 0.25 / 0.75


def test_pairs_threshold_and_clusters_by_hand():
    pairs = pd.DataFrame(
        {"record_id_l": ["a", "c", "b"], "record_id_r": ["b", "d", "c"], "match_probability": [0.99, 0.97, 0.5]}
    )
    # At 0.9 the kept pairs are ab, cd: same as the hand example above.
    assert linkage.pair_metrics(pairs, _truth(), 0.9)["f1"] == pytest.approx(1 / 3)
    # At 0.4, pairs ab cd bc: 2 right of 3, 2 of 4 true pairs found.
    at_04 = linkage.pair_metrics(pairs, _truth(), 0.4)
    assert (at_04["precision"], at_04["recall"]) == pytest.approx((2 / 3, 1 / 2))
    # Clustering at 0.4 chains a-b-c-d: 6 predicted pairs, ab ac bc right (3), so P = 1/2, R = 3/4.
    clusters = linkage.cluster_pairs(list("abcde"), pairs, 0.4)
    assert clusters.groupby("cluster_id").size().sort_values().tolist() == [1, 4]
    clustered = linkage.pairwise_metrics(clusters, _truth())
    assert (clustered["precision"], clustered["recall"]) == pytest.approx((1 / 2, 3 / 4))
    curve = linkage.threshold_curve(pairs, _truth(), [0.4, 0.9])
    assert curve["f1"].tolist() == pytest.approx([0.6, 1 / 3])


# ---------------------------------------------------------------- synthetic CRM / billing / support records

FIRST = ["robert", "william", "elizabeth", "james", "michael", "katherine", "olivia", "emma", "noah", "liam",
         "mason", "sophia", "harper", "ella", "grace", "chloe", "lucas", "ethan", "zoe", "nora", "leah", "ruby",
         "ivy", "daniel", "andrew", "steven", "susan", "margaret", "thomas", "joseph"]  # fmt: skip
LAST = ["smith", "johnson", "williams", "brown", "jones", "garcia", "miller", "davis", "rodriguez", "martinez",
        "wilson", "anderson", "taylor", "moore", "jackson", "martin", "thompson", "white", "harris", "clark",
        "lewis", "robinson", "walker", "young", "allen", "wright", "scott", "nguyen", "hill", "flores", "adams",
        "baker", "nelson", "carter", "mitchell", "roberts", "campbell", "parker", "evans", "edwards"]  # fmt: skip
NICK = {"robert": "Bob", "william": "Bill", "elizabeth": "Liz", "james": "Jim", "michael": "Mike",
        "katherine": "Kate", "daniel": "Dan", "andrew": "Andy", "steven": "Steve", "thomas": "Tom"}  # fmt: skip
COMPANIES = ["Acme Inc", "Globex LLC", "Initech", "Umbrella Corp", "Hooli", "Stark Industries"]


def _typo(rng: random.Random, word: str) -> str:
    i = rng.randrange(1, len(word) - 1)
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def synthetic_contacts(n_people: int = 200, seed: int = 3) -> pd.DataFrame:
    """Each person written down by two or three silos, with nicknames, typos, case and format changes."""
    rng = random.Random(seed)
    rows = []
    for person in range(n_people):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        email = f"{first}.{last}{rng.randrange(10, 99)}@{rng.choice(['gmail.com', 'outlook.com', 'acme.io'])}"
        digits = f"{rng.choice(['212', '415', '617'])}{rng.randrange(2000000, 9999999)}"
        company = rng.choice(COMPANIES)
        phones = [f"({digits[:3]}) {digits[3:6]}-{digits[6:]}", f"+1 {digits[:3]} {digits[3:6]} {digits[6:]}",
                  f"{digits[:3]}.{digits[3:6]}.{digits[6:]}"]  # fmt: skip
        for source in rng.sample(["crm", "billing", "support"], rng.choice([2, 2, 3])):
            rows.append({
                "record_id": f"{source}-{person}",
                "source": source,
                "entity_id": person,
                "first_name": NICK.get(first, first) if rng.random() < 0.3 else first.title(),
                "surname": _typo(rng, last) if rng.random() < 0.2 else last.upper(),
                "email": None if rng.random() < 0.15 else (email.upper() if rng.random() < 0.2 else email),
                "phone": None if rng.random() < 0.3 else rng.choice(phones),
                "company": None if rng.random() < 0.3 else company + rng.choice(["", ".", " "]),
            })  # fmt: skip
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def synthetic_model():
    records = synthetic_contacts()
    prepared = linkage.prepare_records(records)
    model = linkage.train_linker(prepared, link_type="link_and_dedupe")
    return records, prepared, model, linkage.predict_pairs(model)


def test_synthetic_contacts_are_found(synthetic_model):
    records, _, _, pairs = synthetic_model
    clusters = linkage.cluster_pairs(records["record_id"], pairs, threshold=0.9)
    metrics = linkage.pairwise_metrics(clusters, records)
    assert metrics["recall"] >= 0.9, metrics
    assert metrics["precision"] >= 0.95, metrics


def test_pairs_have_the_documented_columns(synthetic_model):
    _, _, _, pairs = synthetic_model
    assert list(pairs.columns) == ["record_id_l", "record_id_r", "source_l", "source_r",
                                   "match_probability", "match_weight"]  # fmt: skip
    assert pairs["match_probability"].between(0, 1).all()


def test_explain_pair_adds_up_to_the_final_weight(synthetic_model):
    records, prepared, model, _ = synthetic_model
    ids = records.groupby("entity_id")["record_id"].apply(list).iloc[0]
    waterfall = linkage.explain_pair(model, prepared, ids[0], ids[1])
    assert waterfall["column_name"].iloc[0] == "Prior"
    assert waterfall["column_name"].iloc[-1] == "Final score"
    assert {"first_name", "surname", "email", "phone", "company"} <= set(waterfall["column_name"])
    parts = waterfall["match_weight"].iloc[:-1].sum()
    assert parts == pytest.approx(waterfall["match_weight"].iloc[-1])
    assert waterfall.to_string()


# ---------------------------------------------------------------- FEBRL 4a/4b


@needs_febrl
def test_febrl_loader_reads_standard_columns():
    records = load_febrl(DATA, drop_columns=["soc_sec_id"])
    assert len(records) == 10_000
    assert records["record_id"].is_unique
    assert "soc_sec_id" not in records.columns
    assert records.groupby("entity_id").size().eq(2).all()
    assert records.loc[records["record_id"] == "rec-1070-org", "first_name"].item() == "michaela"


@needs_febrl
def test_febrl_all_fields_f1_at_least_0999():
    result = evaluate_febrl(DATA, threshold=0.95, thresholds=(0.5, 0.95, 0.99))
    assert result["f1"] >= 0.999, {k: v for k, v in result.items() if k != "curve"}
    assert list(result["curve"]["threshold"]) == [0.5, 0.95, 0.99]


@needs_febrl
def test_febrl_without_soc_sec_id_f1_at_least_0995():
    result = evaluate_febrl(DATA, drop_columns=["soc_sec_id"], threshold=0.95, thresholds=(0.95,))
    assert result["f1"] >= 0.995, {k: v for k, v in result.items() if k != "curve"}


def _m_probabilities(linker) -> dict[tuple[str, str], float]:
    return {(c.output_column_name, level.label_for_charts): level.m_probability
            for c in linker._settings_obj.comparisons for level in c._comparison_levels_excluding_null}


def test_labelled_pairs_move_the_m_probabilities_they_show(synthetic_model):
    records, prepared, unlabelled, _ = synthetic_model
    # pairs of one person whose e-mails differ: the labels show the e-mail disagreeing among matches
    twins = records.dropna(subset=["email"]).groupby("entity_id").filter(
        lambda g: g["source"].nunique() > 1).groupby("entity_id").head(2)
    pairs = twins.groupby("entity_id")["record_id"].apply(list).head(5).tolist()
    source = records.set_index("record_id")["source"]
    labels = pd.DataFrame([{"source_dataset_l": source[a], "record_id_l": a, "source_dataset_r": source[b],
                            "record_id_r": b} for a, b in pairs])
    labelled = linkage.train_linker(prepared, link_type="link_and_dedupe", labels=labels)
    before, after = _m_probabilities(unlabelled), _m_probabilities(labelled)
    moved = {k for k in before if before[k] != pytest.approx(after[k])}
    assert moved, "the labels changed no m probability"
    no_labels = linkage.train_linker(prepared, link_type="link_and_dedupe", labels=labels.head(0))
    assert _m_probabilities(no_labels) == before
