"""Generic record linkage: normalise identity fields, score candidate pairs with splink, cluster, evaluate.

Records use standard columns: ``record_id`` (unique str), ``source`` (str) and any subset of
``first_name``, ``surname``, ``email``, ``phone``, ``date_of_birth``, ``street``, ``suburb``/``city``,
``postcode``, ``state``, ``company``, ``soc_sec_id``. Comparisons and blocking rules are chosen from
the columns present, so the same code links FEBRL person records and CRM/billing/support contacts.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Iterable, Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import email_validator
import pandas as pd
import phonenumbers
import pyarrow as pa
import splink.comparison_level_library as cll
import splink.comparison_library as cl
from splink import DuckDBAPI, Linker, SettingsCreator
from splink.blocking_rule_library import CustomRule
from splink.clustering import cluster_pairwise_predictions_at_threshold

from c360.core import connections, engine
from c360.core.personal import Erased, Person, Work
from c360.core.settings import Settings

if TYPE_CHECKING:
    from splink.internals.blocking_rule_creator import BlockingRuleCreator
    from splink.internals.comparison_creator import ComparisonCreator
    from splink.internals.database_api import DatabaseAPI

LinkType = Literal["link_only", "link_and_dedupe", "dedupe_only"]
DIALECT = "duckdb"  # of the SQL this module writes (custom levels, blocking rules): splink translates it for Spark
ABOUT = "c360"  # the saved model's own key: what its estimate learned from (splink ignores it: removed on load)

IDENTITY_COLUMNS = (
    "first_name",
    "surname",
    "email",
    "phone",
    "date_of_birth",
    "street",
    "city",
    "postcode",
    "state",
    "company",
    "soc_sec_id",
)

# Unambiguous English diminutives only: "chris", "alex", "pat" map to several names, so they stay as is.
NICKNAMES = {
    "bob": "robert", "bobby": "robert", "rob": "robert", "robbie": "robert",
    "bill": "william", "billy": "william", "will": "william", "willy": "william",
    "liz": "elizabeth", "lizzie": "elizabeth", "beth": "elizabeth", "betty": "elizabeth",
    "jim": "james", "jimmy": "james", "jamie": "james",
    "mike": "michael", "mikey": "michael", "mick": "michael",
    "dave": "david", "davy": "david",
    "dick": "richard", "rick": "richard", "ricky": "richard", "rich": "richard",
    "tom": "thomas", "tommy": "thomas",
    "joe": "joseph", "joey": "joseph",
    "jack": "john", "johnny": "john",
    "kate": "katherine", "katie": "katherine", "kathy": "katherine", "catherine": "katherine",
    "peggy": "margaret", "maggie": "margaret", "meg": "margaret",
    "jen": "jennifer", "jenny": "jennifer",
    "steve": "steven", "stephen": "steven",
    "tony": "anthony", "andy": "andrew", "drew": "andrew",
    "dan": "daniel", "danny": "daniel",
    "matt": "matthew", "nick": "nicholas",
    "ed": "edward", "eddie": "edward", "ted": "edward",
    "chuck": "charles", "charlie": "charles",
    "harry": "henry", "hank": "henry",
    "sue": "susan", "susie": "susan",
    "debbie": "deborah", "deb": "deborah",
    "becky": "rebecca", "sally": "sarah", "abby": "abigail",
    "greg": "gregory", "jeff": "jeffrey", "larry": "lawrence",
    "ron": "ronald", "don": "donald", "ken": "kenneth",
    "ben": "benjamin", "fred": "frederick", "patty": "patricia",
}  # fmt: skip

COMPANY_SUFFIXES = {
    "inc", "incorporated", "ltd", "limited", "llc", "plc", "corp", "corporation", "co", "gmbh", "pty",
    "company", "sa", "ag", "bv", "lp", "llp",
}  # fmt: skip

STREET_WORDS = {"st": "street", "rd": "road", "ave": "avenue", "av": "avenue", "dr": "drive", "ln": "lane",
                "ct": "court", "pl": "place", "cres": "crescent", "blvd": "boulevard", "hwy": "highway",
                "cct": "circuit", "tce": "terrace", "pde": "parade", "apt": "apartment"}  # fmt: skip


# ---------------------------------------------------------------- normalisation of single values


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, float) and value != value) or value is pd.NA or value is pd.NaT


def unaccent(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def normalise_text(value: object) -> str | None:
    """Lowercase, unaccent, keep letters/digits, collapse spaces; None when empty."""
    if _blank(value):
        return None
    text = re.sub(r"[^a-z0-9 ]+", " ", unaccent(str(value)).lower())
    text = " ".join(text.split())
    return text or None


def normalise_name(value: object) -> str | None:
    # Drop apostrophes rather than splitting on them, so "O'Brien" and "OBrien" agree.
    return None if _blank(value) else normalise_text(re.sub(r"['\u2019`]", "", str(value)))


def canonical_first_name(value: object) -> str | None:
    name = normalise_name(value)
    return NICKNAMES.get(name, name) if name else None


def normalise_phone(value: object, default_region: str = "US") -> str | None:
    """E.164 form ('+14155550100') of a possible phone number, else None."""
    if _blank(value) or not str(value).strip():
        return None
    try:
        number = phonenumbers.parse(str(value), default_region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def split_email(value: object) -> tuple[str, str] | None:
    """(local part, domain), lowercased, '+tag' dropped from the local part; None when not an e-mail."""
    if _blank(value) or not str(value).strip():
        return None
    try:
        parsed = email_validator.validate_email(
            str(value).strip(), check_deliverability=False, test_environment=True
        )
    except email_validator.EmailNotValidError:
        return None
    local = parsed.local_part.lower().split("+", 1)[0]
    return (local, parsed.ascii_domain.lower()) if local else None


def normalise_email(value: object) -> str | None:
    parts = split_email(value)
    return f"{parts[0]}@{parts[1]}" if parts else None


def normalise_date(value: object) -> str | None:
    """'YYYY-MM-DD' from dates, 'YYYYMMDD' or 'YYYY-M-D'; other text is parsed by pandas (month first).

    Digit typos are kept rather than validated, so a mistyped date still compares as near-equal.
    """
    if _blank(value):
        return None
    if isinstance(value, date):
        return value.strftime("%Y-%m-%d")
    text = str(value).strip()
    if re.fullmatch(r"(18|19|20)\d{6}", text):
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    if re.fullmatch(r"\d{4}\D\d{1,2}\D\d{1,2}", text):
        year, month, day = re.split(r"\D", text)
        return f"{year}-{int(month):02d}-{int(day):02d}"
    parsed = pd.to_datetime(text, errors="coerce", format="mixed")
    return None if pd.isna(parsed) else parsed.strftime("%Y-%m-%d")


def normalise_postcode(value: object) -> str | None:
    if _blank(value):
        return None
    text = re.sub(r"[^A-Z0-9]", "", unaccent(str(value)).upper())
    return text or None


def normalise_street(value: object) -> str | None:
    text = normalise_text(value)
    return " ".join(STREET_WORDS.get(word, word) for word in text.split()) if text else None


def normalise_company(value: object) -> str | None:
    text = normalise_text(value)
    if not text:
        return None
    words = [word for word in text.split() if word not in COMPANY_SUFFIXES]
    return " ".join(words) or text


def normalise_identifier(value: object) -> str | None:
    if _blank(value):
        return None
    text = re.sub(r"[^A-Za-z0-9]", "", str(value)).upper()
    return text or None


# ---------------------------------------------------------------- normalisation of a records table


def prepare_records(records: pd.DataFrame, default_region: str = "US") -> pd.DataFrame:
    """Standard columns, normalised; adds helper columns first_name_canon, email_local, email_domain."""
    if "record_id" not in records.columns:
        raise ValueError("records need a 'record_id' column")
    if records["record_id"].duplicated().any():
        raise ValueError("record_id must be unique")
    raw = records.rename(columns={"suburb": "city"}) if "city" not in records.columns else records
    out = pd.DataFrame({"record_id": raw["record_id"].astype(str).to_numpy()})
    out["source"] = raw["source"].astype(str).to_numpy() if "source" in raw.columns else "records"
    single = {
        "surname": normalise_name,
        "date_of_birth": normalise_date,
        "street": normalise_street,
        "city": normalise_text,
        "postcode": normalise_postcode,
        "state": normalise_text,
        "company": normalise_company,
        "soc_sec_id": normalise_identifier,
    }
    if "first_name" in raw.columns:
        out["first_name"] = [normalise_name(v) for v in raw["first_name"]]
        out["first_name_canon"] = [canonical_first_name(v) for v in out["first_name"]]
    for column, normalise in single.items():
        if column in raw.columns:
            out[column] = [normalise(v) for v in raw[column]]
    if "email" in raw.columns:
        parts = [split_email(v) for v in raw["email"]]
        out["email"] = [f"{p[0]}@{p[1]}" if p else None for p in parts]
        out["email_local"] = [p[0] if p else None for p in parts]
        out["email_domain"] = [p[1] if p else None for p in parts]
    if "phone" in raw.columns:
        # A two-letter ``country`` per record (e.g. billing's) beats the default region for national formats.
        country = raw["country"] if "country" in raw.columns else pd.Series(None, index=raw.index)
        regions = [c.upper() if isinstance(c, str) and len(c) == 2 else default_region for c in country]
        out["phone"] = [normalise_phone(v, r) for v, r in zip(raw["phone"], regions, strict=True)]
    return out.astype(object).where(out.notna(), None)


def identity_columns(prepared: pd.DataFrame) -> list[str]:
    """Identity columns present with at least one value (an all-null column carries no evidence)."""
    return [c for c in IDENTITY_COLUMNS if c in prepared.columns and prepared[c].notna().any()]


# ---------------------------------------------------------------- splink model specification

# Starting (and fallback) m and u of partial-agreement levels. EM and u-sampling overwrite them wherever
# the level occurs in their data; splink's generic defaults would otherwise give a fuzzy level that EM
# never saw among matches (common on small or clean data) a large positive weight.
UNSEEN_LEVEL_M, UNSEEN_LEVEL_U = 1e-3, 1e-5


def _comparison(column: str, levels: list) -> cl.CustomComparison:
    """Levels are null, exact, partial levels (most to least similar), else."""
    null, exact, *partial, other = levels
    for level in partial:
        level.configure(m_probability=UNSEEN_LEVEL_M, u_probability=UNSEEN_LEVEL_U)
    return cl.CustomComparison([null, exact, *partial, other], output_column_name=column)


def _name_comparison(column: str, other: str | None, compare: str | None = None) -> cl.CustomComparison:
    """Null / exact / swapped with the other name field / Jaro-Winkler >= 0.92, >= 0.8 / else.

    ``compare`` is the column the similarity levels read (first_name_canon, so "Bob" = "Robert");
    null-ness and the swapped level read the name as written.
    """
    compare = compare or column
    levels = [cll.NullLevel(column), cll.ExactMatchLevel(compare, term_frequency_adjustments=True)]
    if other:
        # Form-entry (and FEBRL) errors: first name and surname typed into each other's field.
        swapped = f'"{column}_l" = "{other}_r" OR "{column}_r" = "{other}_l"'
        levels.append(cll.CustomLevel(swapped, f"{column} swapped with {other}", base_dialect_str=DIALECT))
    levels += [cll.JaroWinklerLevel(compare, 0.92), cll.JaroWinklerLevel(compare, 0.8), cll.ElseLevel()]
    return _comparison(column, levels)


def _dob_comparison() -> cl.CustomComparison:
    dob_l, dob_r = '"date_of_birth_l"', '"date_of_birth_r"'
    swapped = (
        f"substr({dob_l}, 1, 4) = substr({dob_r}, 1, 4) AND substr({dob_l}, 6, 2) = substr({dob_r}, 9, 2) "
        f"AND substr({dob_l}, 9, 2) = substr({dob_r}, 6, 2)"
    )
    levels = [
        cll.NullLevel("date_of_birth"),
        cll.ExactMatchLevel("date_of_birth"),
        cll.CustomLevel(swapped, "day and month swapped", base_dialect_str=DIALECT),
        cll.DamerauLevenshteinLevel("date_of_birth", 1),
        cll.DamerauLevenshteinLevel("date_of_birth", 2),
        cll.ElseLevel(),
    ]
    return _comparison("date_of_birth", levels)


def _email_comparison() -> cl.CustomComparison:
    levels = [
        cll.NullLevel("email"),
        cll.ExactMatchLevel("email"),
        cll.ExactMatchLevel("email_local").configure(label_for_charts="same local part"),
        cll.JaroWinklerLevel("email_local", 0.88),
        cll.ExactMatchLevel("email_domain").configure(label_for_charts="same domain"),
        cll.ElseLevel(),
    ]
    return _comparison("email", levels)


def _string_comparison(column: str, jaro_winkler: Sequence[float], tf: bool = False) -> cl.CustomComparison:
    exact = cll.ExactMatchLevel(column, term_frequency_adjustments=tf)
    fuzzy = [cll.JaroWinklerLevel(column, t) for t in jaro_winkler]
    return _comparison(column, [cll.NullLevel(column), exact, *fuzzy, cll.ElseLevel()])


def _edit_comparison(column: str, distances: Sequence[int], tf: bool = False) -> cl.CustomComparison:
    exact = cll.ExactMatchLevel(column, term_frequency_adjustments=tf)
    fuzzy = [cll.DamerauLevenshteinLevel(column, d) for d in distances]
    return _comparison(column, [cll.NullLevel(column), exact, *fuzzy, cll.ElseLevel()])


def comparisons_for(columns: Iterable[str]) -> list[ComparisonCreator]:
    present = set(columns)
    both_names = {"first_name", "surname"} <= present
    builders = {
        "first_name": lambda: _name_comparison(
            "first_name", "surname" if both_names else None, compare="first_name_canon"
        ),
        "surname": lambda: _name_comparison("surname", "first_name" if both_names else None),
        "email": _email_comparison,
        "phone": lambda: _edit_comparison("phone", [1]),
        "date_of_birth": _dob_comparison,
        "street": lambda: _string_comparison("street", [0.9, 0.8]),
        "city": lambda: _string_comparison("city", [0.9], tf=True),
        "postcode": lambda: _edit_comparison("postcode", [1], tf=True),
        "state": lambda: _string_comparison("state", []),
        "company": lambda: _string_comparison("company", [0.9], tf=True),
        "soc_sec_id": lambda: _edit_comparison("soc_sec_id", [1, 2]),
    }
    return [builders[c]() for c in IDENTITY_COLUMNS if c in present]


# A blocking term is a column (equal on both sides), "column:n" (first n characters equal) or a
# (left column, right column) pair for fields typed into each other's box. Each rule is selective on
# its own (email, phone, id) or an AND of two fields, so blocks stay small as the data grows; there is
# deliberately no rule on postcode, city, state or date of birth alone.
Term = str | tuple[str, str]
_BLOCKING_CANDIDATES: tuple[tuple[Term, ...], ...] = (
    ("email",),
    ("phone",),
    ("soc_sec_id",),
    ("first_name_canon", "surname"),
    ("surname", "date_of_birth"),
    ("first_name_canon", "date_of_birth"),
    ("date_of_birth", "postcode"),
    ("date_of_birth", "city"),
    ("date_of_birth", "state"),
    ("date_of_birth", "surname:1"),
    ("date_of_birth", "first_name:1"),
    ("first_name:2", "postcode"),
    ("surname", "postcode"),
    ("first_name_canon", "city"),
    ("surname", "city"),
    ("street", "postcode"),
    ("street", "city"),
    ("surname", "company"),
    ("first_name_canon", "company"),
    ("email_local", "surname"),
    (("first_name", "surname"), ("surname", "first_name")),
    (("first_name", "surname"), "date_of_birth"),
    (("surname", "first_name"), "date_of_birth"),
    (("first_name", "surname"), "postcode"),
    (("surname", "first_name"), "postcode"),
)
_HELPER_COLUMNS = {"first_name_canon": "first_name", "email_local": "email", "email_domain": "email"}


def _term_sql(term: Term) -> str:
    if isinstance(term, tuple):
        return f'l."{term[0]}" = r."{term[1]}"'
    column, _, length = term.partition(":")
    if length:
        return f'substr(l."{column}", 1, {length}) = substr(r."{column}", 1, {length})'
    return f'l."{column}" = r."{column}"'


def _rule_sql(rule: tuple[Term, ...]) -> str:
    return " AND ".join(_term_sql(term) for term in rule)


def _columns_of(rule: tuple[Term, ...]) -> set[str]:
    """Standard identity columns a rule reads (helper columns count as their source column)."""
    names = {n.partition(":")[0] for term in rule for n in (term if isinstance(term, tuple) else (term,))}
    return {_HELPER_COLUMNS.get(n, n) for n in names}


def _comparison_inputs(columns: set[str]) -> dict[str, set[str]]:
    # The name comparisons also read the other name field (swapped-names level).
    names = {"first_name", "surname"} if {"first_name", "surname"} <= columns else set()
    return {c: ({c} | names if c in names else {c}) for c in columns}


def blocking_rules_for(columns: Iterable[str]) -> list[str]:
    present = set(columns)
    rules = [_rule_sql(rule) for rule in _BLOCKING_CANDIDATES if _columns_of(rule) <= present]
    if not rules:
        raise ValueError(f"no selective blocking rule can be built from columns {sorted(present)}")
    return rules


def training_rules_for(columns: Iterable[str]) -> list[str]:
    """Blocking rules for EM, chosen so that every comparison is estimated at least once.

    EM cannot estimate a comparison from pairs blocked on a column it reads, so rules are added
    until each comparison has been left free by one of them.
    """
    present = set(columns)
    inputs = _comparison_inputs(present)
    untrained = set(present)
    chosen: list[str] = []
    for rule in _BLOCKING_CANDIDATES:
        used = _columns_of(rule)
        trained = {c for c in untrained if not inputs[c] & used}
        if used <= present and trained:
            chosen.append(_rule_sql(rule))
            untrained -= trained
        if not untrained:
            break
    return chosen


def _rule(sql: str) -> CustomRule:
    """A blocking rule of this module's SQL, which splink translates for the engine."""
    return CustomRule(sql, sql_dialect=DIALECT)


def _exact_rules_with_matches(data: pd.DataFrame, link_type: LinkType) -> list[str | BlockingRuleCreator]:
    """Near-certain rules (same e-mail, phone, id, or name and dob) that find at least one pair.

    They estimate the prior match probability; a rule that finds nothing would set it to zero.
    """
    keys = [("email",), ("phone",), ("soc_sec_id",), ("first_name_canon", "surname", "date_of_birth")]
    rules: list[str | BlockingRuleCreator] = []
    for key in keys:
        if not set(key) <= set(data.columns):
            continue
        groups = data.dropna(subset=list(key)).groupby(list(key))["source"]
        shared = groups.nunique() > 1 if link_type == "link_only" else groups.size() > 1
        if shared.any():
            rules.append(_rule(_rule_sql(key)))
    return rules


def build_settings(columns: Iterable[str], link_type: LinkType) -> SettingsCreator:
    present = set(columns)
    # splink's signature wants lists of the base types.
    comparisons: list[ComparisonCreator | dict] = [*comparisons_for(present)]
    rules: list[BlockingRuleCreator | dict] = [_rule(rule) for rule in blocking_rules_for(present)]
    return SettingsCreator(
        link_type=link_type,
        unique_id_column_name="record_id",
        comparisons=comparisons,
        blocking_rules_to_generate_predictions=rules,
        additional_columns_to_retain=["source"],
        retain_intermediate_calculation_columns=True,
        retain_matching_columns=True,
    )


# ---------------------------------------------------------------- training and scoring


def database(engine_name: str = "duckdb", memory_limit: str = "3GB") -> DatabaseAPI:
    """splink's backend on `engine_name` (the settings' `engine` for `c360 resolve`): DuckDB in this process, or
    the Spark session of `c360.core.engine`. Call `release` when the run is done."""
    return _spark_database() if engine_name == "spark" else _duckdb_database(memory_limit)


def _duckdb_database(memory_limit: str) -> DuckDBAPI:
    """splink's DuckDB, bounded: unbounded, it holds every blocked pair in memory (17 GB at 1M records) rather
    than spilling to its temporary directory. The records are personal data: with C360_ENCRYPTION_KEY set, the
    spilled blocks are encrypted as the warehouse is."""
    spill = Path(tempfile.gettempdir()) / "c360-splink"  # in-memory DuckDB would spill into the working directory
    return DuckDBAPI(connection=connections.open_file(key=Settings().encryption_key, memory_limit=memory_limit,
                                                      temp_directory=str(spill)))


def _spark_database() -> DatabaseAPI:
    """splink on the Spark session, with DuckDB's similarity functions (`_similarity`).

    splink breaks the lineage of its large intermediate tables (the records with their term frequencies, the
    compared pairs: personal data) by writing them as Parquet to the checkpoint folder, `spark_scratch()`,
    which `release` empties. With C360_ENCRYPTION_KEY set they are persisted instead, in Spark's memory and its
    local disk, which the session encrypts (`c360.core.engine`): no plain copy is written."""
    from splink.backends.spark import SparkAPI

    s, session = Settings(), engine.spark()
    for name, function in SIMILARITY.items():
        session.udf.register(name, _similarity(function))
    if s.encryption_key is not None:
        return SparkAPI(spark_session=session, break_lineage_method="persist", register_udfs_automatically=False)
    session.sparkContext.setCheckpointDir(str(spark_scratch(s)))
    return SparkAPI(spark_session=session, break_lineage_method="parquet", register_udfs_automatically=False)


# splink's names for the similarity functions on Spark → DuckDB's. splink's own Spark functions (a jar) count Jaro's
# transpositions differently ("turrner" ~ "turner": 0.869 against DuckDB's 0.897), which moved pairs across levels.
SIMILARITY = {"jaro_winkler": "jaro_winkler_similarity", "damerau_levenshtein": "damerau_levenshtein"}


def _similarity(function: str) -> Any:
    """DuckDB's `function` of two strings as a vectorised Spark function, so both engines compare values alike."""
    from pyspark.sql.functions import pandas_udf

    def compare(left: pd.Series, right: pd.Series) -> pd.Series:
        pairs = pa.table({"l": pa.array(left, pa.string()), "r": pa.array(right, pa.string())})
        scores = connections.local().from_arrow(pairs).project(f"{function}(l, r)::DOUBLE AS v").df()["v"]
        return scores.astype("Float64")  # NULL stays null: a NaN would pass Spark's `>= 0.92`

    return pandas_udf(compare, "double")


def spark_scratch(s: Settings) -> Path:
    """Spark's checkpoint folder for splink (Spark adds a folder per run under it)."""
    return s.home / "spark" / "identity"


def release(db_api: DatabaseAPI) -> None:
    """Drop the tables splink made in `db_api` (Spark's persisted ones leave its memory and disk), and the
    checkpoint folder, which holds personal data: nothing of a run is kept once it is done."""
    db_api.delete_tables_created_by_splink_from_db()
    shutil.rmtree(spark_scratch(Settings()), ignore_errors=True)


class SparkScratch:
    """The personal-data store of Spark's checkpoints (`c360.core.personal`): empty between runs, as `release`
    removes them; what an interrupted run left is removed whole on erasure (nothing in it is kept)."""

    @staticmethod
    def export(work: Work, person: Person) -> list[str]:
        """The files left (read by no one: the next run's `release` removes them)."""
        return sorted(str(path.relative_to(work.s.home)) for path in spark_scratch(work.s).rglob("*") if path.is_file())

    @staticmethod
    def erase(work: Work, person: Person) -> Erased:
        files = SparkScratch.export(work, person)
        shutil.rmtree(spark_scratch(work.s), ignore_errors=True)
        return Erased(files=files)


def _register(db_api: DatabaseAPI, prepared: pd.DataFrame, link_type: LinkType) -> list:
    # Named after the backend object: one Spark session holds the tables of every run of the process.
    if link_type == "dedupe_only":
        return [db_api.register(_strings(prepared), table_name=f"c360_records_{db_api.id}")]
    groups = prepared.groupby("source", sort=True)
    # Table names are internal identifiers; the source value itself may not be a valid SQL name.
    return [
        db_api.register(_strings(frame), table_name=f"c360_source_{i}_{db_api.id}", dataset_display_name=str(name))
        for i, (name, frame) in enumerate(groups)
    ]


def _strings(records: pd.DataFrame) -> pa.Table:
    """The records as text columns, typed, so that every engine reads the same types: a source without phones
    has a column of nulls, which Spark cannot infer a type for."""
    schema = pa.schema([(column, pa.string()) for column in records.columns])
    return pa.Table.from_pandas(records, schema=schema, preserve_index=False)


def load_linker(prepared: pd.DataFrame, model_path: str | Path, link_type: LinkType = "link_and_dedupe",
                db_api: DatabaseAPI | None = None) -> Linker:
    """A linker from a model saved by `save_model`, over these records (those it was trained on, or today's), in
    `db_api` (default: a new DuckDB)."""
    if link_type != "dedupe_only" and prepared["source"].nunique() < 2:
        link_type = "dedupe_only"
    db_api = db_api or database()
    settings = _saved_settings(json.loads(Path(model_path).read_text()), db_api.sql_dialect.sql_dialect_str)
    return Linker(_register(db_api, prepared, link_type), settings, log_level=None)


def _saved_settings(saved: dict, dialect: str) -> dict:
    """A saved model in the engine's SQL `dialect`: its comparisons and blocking rules as `build_settings` writes
    them for its columns, with its parameters (the prior, each level's m and u). The saved SQL is in the dialect
    of the engine that estimated it, and splink's translation misses similarity functions (DuckDB's
    jaro_winkler_similarity is Spark's jaro_winkler), so only the numbers are read."""
    columns = [comparison["output_column_name"] for comparison in saved["comparisons"]]
    settings = build_settings(columns, saved["link_type"]).create_settings_dict(dialect)
    for old, new in zip(saved["comparisons"], settings["comparisons"], strict=True):
        old_levels, new_levels = old["comparison_levels"], new["comparison_levels"]
        if [lv["label_for_charts"] for lv in old_levels] != [lv["label_for_charts"] for lv in new_levels]:
            raise ValueError(f"the saved model's {old['output_column_name']} levels are not this version's: "
                             "estimate it again (`c360 resolve --retrain`)")
        for old_level, new_level in zip(old_levels, new_levels, strict=True):
            for name in ("m_probability", "u_probability"):
                new_level.pop(name, None)
                if name in old_level:
                    new_level[name] = old_level[name]
    return settings | {"probability_two_random_records_match": saved["probability_two_random_records_match"]}


def save_model(linker: Linker, model_path: Path, about: dict) -> None:
    """splink's settings JSON with the estimated parameters, and under `ABOUT` what the estimate learned from
    (`about`: counts and dates, no values), written whole (temporary file, then rename). splink saves no term
    frequency tables and no example values in it: the records' values never reach this file."""
    settings = linker.misc.save_model_to_json() | {ABOUT: about}
    model_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = model_path.with_name(f".{model_path.name}.tmp")
    tmp.write_text(json.dumps(settings, indent=1))
    tmp.replace(model_path)


def saved_about(model_path: Path) -> dict | None:
    """What the saved model learned from (`save_model`); None when there is no saved model (or not ours)."""
    if not model_path.exists():
        return None
    about = json.loads(model_path.read_text()).get(ABOUT)
    return about if isinstance(about, dict) else None


def train_linker(
    prepared: pd.DataFrame,
    link_type: LinkType = "link_and_dedupe",
    seed: int = 42,
    u_max_pairs: float = 2e6,
    recall_of_exact_rules: float = 0.7,
    labels: pd.DataFrame | None = None,
    db_api: DatabaseAPI | None = None,
) -> Linker:
    """A splink Linker with u from random sampling and m from EM, and from ``labels`` when given, in ``db_api``
    (default: a new DuckDB).

    ``prepared`` comes from ``prepare_records``. ``link_type`` is "dedupe_only" (one table),
    "link_only" (only pairs across sources) or "link_and_dedupe"; with a single source the
    linking types fall back to "dedupe_only". ``labels`` are pairs known to match (source_dataset_l,
    record_id_l, source_dataset_r, record_id_r): their m estimate is one more training session, and
    splink takes each m as the median of its sessions, so a few labels nudge the model, never swamp it.
    """
    if link_type != "dedupe_only" and prepared["source"].nunique() < 2:
        link_type = "dedupe_only"
    columns = identity_columns(prepared)
    helpers = [c for c, source in _HELPER_COLUMNS.items() if source in columns and c in prepared.columns]
    data = prepared[["record_id", "source", *columns, *helpers]]
    settings = build_settings(columns, link_type)
    linker = Linker(_register(db_api or database(), data, link_type), settings, log_level=None)
    exact_rules = _exact_rules_with_matches(data, link_type)
    if exact_rules:  # otherwise splink's default prior (1e-4) stays
        training = linker.training
        training.estimate_probability_two_random_records_match(exact_rules, recall=recall_of_exact_rules)
    linker.training.estimate_u_using_random_sampling(max_pairs=u_max_pairs, seed=seed)
    for rule in training_rules_for(columns):
        linker.training.estimate_parameters_using_expectation_maximisation(
            _rule(rule), estimate_without_term_frequencies=True
        )
    if labels is not None and len(labels):
        linker.table_management.register_table(labels, "c360_labels", overwrite=True)
        linker.training.estimate_m_from_pairwise_labels("c360_labels")
    return linker


def predict_pairs(linker: Linker, min_probability: float = 0.01) -> pd.DataFrame:
    """Candidate pairs: record_id_l, record_id_r, source_l, source_r, match_probability, match_weight."""
    scored = linker.inference.predict(threshold_match_probability=min_probability, warning_mode="never")
    # Only these columns leave the engine: the scored table also holds every comparison's inputs and levels (kept
    # for explanations), which as one pandas frame took 16 GB at a million records.
    columns = ["record_id_l", "record_id_r", "source_l", "source_r", "match_probability", "match_weight"]
    try:
        picked = scored.query_sql(f"SELECT {', '.join(columns)} FROM {{this}}")
        frame = picked.as_pandas_dataframe()
        picked.drop_table_from_database_and_remove_from_cache()
    finally:
        scored.drop_table_from_database_and_remove_from_cache()
    # Ties in a total order: the engines return rows in different orders.
    order = ["match_probability", "record_id_l", "record_id_r"]
    return frame.sort_values(order, ascending=[False, True, True], ignore_index=True)


def score_pairs(
    records: pd.DataFrame,
    link_type: LinkType = "link_and_dedupe",
    default_region: str = "US",
    min_probability: float = 0.01,
    seed: int = 42,
) -> pd.DataFrame:
    """Normalise, train unsupervised and score candidate pairs in one call."""
    linker = train_linker(prepare_records(records, default_region), link_type=link_type, seed=seed)
    return predict_pairs(linker, min_probability)


def explain_pair(linker: Linker, prepared: pd.DataFrame, record_id_l: str, record_id_r: str) -> pd.DataFrame:
    """Per-comparison match weights of one pair (splink's waterfall data), prior first and final score last.

    Works for any two records of ``prepared`` (the frame the linker was trained on), blocked or not.
    """
    rows = prepared.set_index("record_id").loc[[str(record_id_l), str(record_id_r)]].reset_index()
    left, right = rows.astype(object).where(rows.notna(), None).to_dict("records")
    scored = linker.inference.score_pair(left, right).as_record_list()
    chart = linker.visualisations.waterfall_chart(scored, filter_nulls=False)
    columns = ["column_name", "value_l", "value_r", "label_for_charts", "bayes_factor", "log2_bayes_factor"]
    names = {"label_for_charts": "level", "log2_bayes_factor": "match_weight"}
    return pd.DataFrame(chart.chart_data)[columns].rename(columns=names)


# ---------------------------------------------------------------- clustering and evaluation


def cluster_pairs(record_ids: Iterable[str], pairs: pd.DataFrame, threshold: float = 0.95) -> pd.DataFrame:
    """Connected components of pairs with match_probability >= threshold: record_id, cluster_id."""
    nodes = pd.DataFrame({"record_id": pd.Series(list(record_ids), dtype=str)})
    edges = pairs[["record_id_l", "record_id_r", "match_probability"]]
    clusters = cluster_pairwise_predictions_at_threshold(
        nodes, edges, database(), node_id_column_name="record_id", threshold_match_probability=threshold
    ).as_pandas_dataframe()
    return clusters[["record_id", "cluster_id"]].astype(str)


def _pair_count(sizes: pd.Series) -> int:
    return int((sizes * (sizes - 1) // 2).sum())


def _scores(true_positive: int, predicted: int, actual: int) -> dict:
    precision = true_positive / predicted if predicted else 1.0
    recall = true_positive / actual if actual else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "true_positive_pairs": true_positive,
        "predicted_pairs": predicted,
        "true_pairs": actual,
    }


def pairwise_metrics(clusters: pd.DataFrame, truth: pd.DataFrame, entity_column: str = "entity_id") -> dict:
    """Pairwise precision/recall/F1 of predicted clusters against true entities.

    Both frames are keyed by record_id; a pair is predicted when both records share a cluster_id and
    true when they share an entity. Records missing from ``clusters`` or without an entity count as
    singletons.
    """
    joined = truth[["record_id", entity_column]].merge(clusters[["record_id", "cluster_id"]], how="left")
    singleton = "record:" + joined["record_id"].astype(str)
    joined["cluster_id"] = joined["cluster_id"].fillna(singleton)
    joined[entity_column] = joined[entity_column].fillna(singleton)
    predicted = _pair_count(joined.groupby("cluster_id").size())
    actual = _pair_count(joined.groupby(entity_column).size())
    true_positive = _pair_count(joined.groupby(["cluster_id", entity_column]).size())
    return _scores(true_positive, predicted, actual)


def pair_metrics(
    pairs: pd.DataFrame, truth: pd.DataFrame, threshold: float, entity_column: str = "entity_id"
) -> dict:
    """Pairwise precision/recall/F1 of the pairs at or above ``threshold`` as scored (no transitive closure)."""
    entity = truth.set_index("record_id")[entity_column]
    kept = pairs[pairs["match_probability"] >= threshold]
    left, right = kept["record_id_l"].map(entity), kept["record_id_r"].map(entity)
    true_positive = int((left.notna() & (left == right)).sum())
    predicted, actual = len(kept), _pair_count(truth.groupby(entity_column).size())
    return _scores(true_positive, predicted, actual)


def threshold_curve(
    pairs: pd.DataFrame,
    truth: pd.DataFrame,
    thresholds: Iterable[float],
    entity_column: str = "entity_id",
    clustered: bool = True,
) -> pd.DataFrame:
    """Pairwise precision, recall and F1 at each match-probability threshold.

    ``clustered`` scores the connected components formed at the threshold (what the customer
    profile will use); otherwise the scored pairs themselves.
    """
    rows = []
    for threshold in thresholds:
        if clustered:
            clusters = cluster_pairs(truth["record_id"], pairs, threshold)
            metrics = pairwise_metrics(clusters, truth, entity_column)
        else:
            metrics = pair_metrics(pairs, truth, threshold, entity_column)
        rows.append({"threshold": threshold, **metrics})
    return pd.DataFrame(rows)
