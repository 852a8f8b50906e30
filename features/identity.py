"""Identity resolution: every source record of the warehouse linked to one customer (an account).

People are linked across silos by splink (features.linkage: no labels, EM on the data itself) plus safe
deterministic rules; records are then grouped into customers by the keys systems share (a contact's CRM account,
the billing key the CRM knows, a product workspace) and by the person links, strongest first, never joining two
CRM accounts. Customer ids are stable across runs: a customer keeps its id unless merged or split, and both are
recorded with their evidence. Stewards' decisions (`c360.features.stewardship`) override the model: a link is a
forced edge, an unlink a cut that no chain of links may cross, and the links are labels the model learns from.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from splink import Linker

from c360.core import contract, engine, warehouse
from c360.features import linkage, versions
from c360.features.ingest import upgrade

if TYPE_CHECKING:
    from splink.internals.database_api import DatabaseAPI

    from c360.features.live_identity import Ledger

NAME_PARTS = "split_part(trim({0}), ' ', 1) AS first_name, " \
             "nullif(regexp_extract(trim({0}), ' (\\S+)$', 1), '') AS surname"


def _person_sql(table: str, key: str, first_last: str, email: str, phone: str, company: str,
                anchor: str = "NULL", seen: str = "NULL", country: str = "NULL") -> str:
    return f"""SELECT '{table.replace('_', '/', 1)}' AS source, {key}::VARCHAR AS source_key, {first_last},
        {email} AS email, {phone} AS phone, {company} AS company, {country} AS country,
        {anchor} AS anchor, {seen}::TIMESTAMP AS seen_at FROM {table}"""


# The person records of each silo, by source: `c360.features.live_identity` reads an event's row with the same SQL.
RECORD_SQLS = {
    "crm/contacts": _person_sql("crm_contacts c JOIN crm_accounts a USING (account_id)", "contact_id",
                                "c.first_name, c.last_name AS surname", "c.email", "c.phone", "a.account_name",
                                anchor="'acct:' || c.account_id", seen="c.created_at").replace(
        "'crm/contacts c JOIN crm_accounts a USING (account_id)'", "'crm/contacts'"),
    "billing/customers": _person_sql("billing_customers", "billing_account_id", NAME_PARTS.format("name"), "email",
                                     "phone", "company", anchor="'ba:' || billing_account_id", seen="created_at",
                                     country="country"),
    "product/users": _person_sql("product_users", "user_id", NAME_PARTS.format("display_name"), "email", "NULL",
                                 "workspace_name", anchor="'ws:' || workspace_id", seen="signed_up_at"),
    "support/tickets": _person_sql("support_tickets", "ticket_id", NAME_PARTS.format("requester_name"),
                                   "requester_email", "requester_phone", "company", seen="opened_at"),
    "marketing/contacts": _person_sql("marketing_contacts", "mkt_contact_id", "first_name, last_name AS surname",
                                      "email", "NULL", "company", seen="subscribed_at"),
    "feedback/nps": _person_sql("feedback_nps", "response_id", NAME_PARTS.format("name"), "email", "NULL", "NULL",
                                seen="responded_at"),
    "feedback/feature_requests": _person_sql("feedback_feature_requests", "request_id", NAME_PARTS.format("name"),
                                             "email", "NULL", "NULL", seen="created_at"),
}
RECORD_SQL = " UNION ALL ".join(RECORD_SQLS.values())
ACCOUNT_SQL = """SELECT 'crm/accounts' AS source, account_id AS source_key, account_name, segment, region,
    'acct:' || account_id AS anchor, 'ba:' || billing_account_id AS billing_anchor, created_at AS seen_at
    FROM crm_accounts"""
KEY_NAMES = {"acct": "crm account", "ba": "billing account", "ws": "product workspace"}
SOURCE_PRIORITY = ("crm/accounts", "crm/contacts", "billing/customers", "product/users", "marketing/contacts",
                   "support/tickets", "feedback/nps", "feedback/feature_requests")


def normalise(people: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The records for splink (linkage.prepare_records), and the raw records with their normalised e-mail,
    phone, e-mail domain and company beside them."""
    prepared = linkage.prepare_records(people)
    return _with_normal(people, prepared), prepared


def _with_normal(people: pd.DataFrame, prepared: pd.DataFrame) -> pd.DataFrame:
    """`people` with the normalised values of `prepared` (its rows in the same order) beside them."""
    normal = {"email_norm": "email", "phone_norm": "phone", "email_domain": "email_domain", "company_norm": "company"}
    return people.assign(**{k: prepared[v].to_numpy() for k, v in normal.items()})


def read_records(con) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Person records of every silo in standard columns, and the CRM accounts (thin I/O): every record the
    warehouse ever held, those the source deleted since too (`versions.ever`)."""
    # Ordered, so that linking the same data twice gives the same customers.
    ever = "WITH " + ", ".join(versions.ever(contract.table(t)) for t in (*RECORD_SQLS, "crm/accounts"))
    people = con.execute(f"{ever} SELECT * FROM ({RECORD_SQL}) ORDER BY source, source_key").df()
    people.insert(0, "record_id", people["source"] + ":" + people["source_key"])
    accounts = con.execute(f"{ever} {ACCOUNT_SQL} ORDER BY source_key").df()
    accounts.insert(0, "record_id", accounts["source"] + ":" + accounts["source_key"])
    return people, accounts


# ---------------------------------------------------------------- linking people


def score_people(prepared: pd.DataFrame, linker: Linker) -> pd.DataFrame:
    """Splink pairs plus same-e-mail pairs of prepared (normalised) records."""
    pairs = linkage.predict_pairs(linker, min_probability=0.1).assign(method="model")
    same_email = _same_value_pairs(prepared, "email").assign(match_probability=1.0, method="rule: same e-mail")
    return pd.concat([same_email, pairs], ignore_index=True)


def linker_for(prepared: pd.DataFrame, model_path: Path, decided: pd.DataFrame, db_api: DatabaseAPI,
               seed: int = 42, retrain: bool = False) -> tuple[Linker, bool]:
    """The linker over `prepared` in `db_api` and whether its parameters were estimated now: the saved model's
    parameters, estimated once and reused, so that every later run (on either engine) scores pairs alike;
    estimated again (and saved) with `retrain`, without a saved model, or when the stewards' links (its labels)
    changed since."""
    learned_from = _label_summary(decided)
    if not retrain and linkage.saved_about(model_path) == learned_from:
        return linkage.load_linker(prepared, model_path, db_api=db_api), False
    linker = linkage.train_linker(prepared, link_type="link_and_dedupe", seed=seed, labels=labels(decided, prepared),
                                  db_api=db_api)
    linkage.save_model(linker, model_path, learned_from)
    return linker, True


def _label_summary(decided: pd.DataFrame) -> dict:
    """What tells one set of stewards' links from another without naming a record: their count and latest date."""
    links = decided[decided["decision"] == "link"]
    latest = pd.Timestamp(links["decided_at"].max()).isoformat() if len(links) else None
    return {"links": len(links), "latest_link": latest}


def labels(decided: pd.DataFrame, prepared: pd.DataFrame) -> pd.DataFrame:
    """The stewards' links between two person records, as splink's pairwise labels (each a match). Unlinks are no
    labels: splink learns m from matches only (u comes from random pairs, nearly all non-matches anyway)."""
    source = prepared.set_index("record_id")["source"]
    links = decided[(decided["decision"] == "link") & decided["record_id_l"].isin(source.index)
                    & decided["record_id_r"].isin(source.index)]
    return pd.DataFrame({"source_dataset_l": links["record_id_l"].map(source), "record_id_l": links["record_id_l"],
                         "source_dataset_r": links["record_id_r"].map(source), "record_id_r": links["record_id_r"]})


def _same_value_pairs(prepared: pd.DataFrame, column: str) -> pd.DataFrame:
    """Each record paired with the first record sharing its normalised value: enough to connect them all."""
    known = prepared.dropna(subset=[column])
    first = known.groupby(column)["record_id"].transform("first")
    keep = known["record_id"] != first
    return pd.DataFrame({"record_id_l": first[keep].to_numpy(), "record_id_r": known.loc[keep, "record_id"]})


# ---------------------------------------------------------------- grouping into customers


class Groups:
    """Union-find over records and key nodes; a group never holds two CRM accounts, nor two records a steward
    unlinked (`cuts`)."""

    def __init__(self, cuts: Iterable[tuple[str, str]] = ()) -> None:
        self.parent: dict[str, str] = {}
        self.account: dict[str, str | None] = {}
        self.apart: dict[str, set[str]] = {}  # per root: the records its group must never hold
        for a, b in cuts:
            self.apart.setdefault(a, set()).add(b)
            self.apart.setdefault(b, set()).add(a)

    def find(self, node: str) -> str:
        self.parent.setdefault(node, node)
        self.account.setdefault(node, node if node.startswith("acct:") else None)
        root = node
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[node] != root:  # path compression
            self.parent[node], node = root, self.parent[node]
        return root

    def union(self, a: str, b: str) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        acc_a, acc_b = self.account[ra], self.account[rb]
        if acc_a and acc_b and acc_a != acc_b:
            return False  # one person link must not fuse two CRM accounts
        if any(self.find(x) == rb for x in self.apart.get(ra, ())):
            return False  # a steward unlinked a record of one group from a record of the other
        self.parent[rb] = ra
        self.account[ra] = acc_a or acc_b
        if rb in self.apart:
            self.apart.setdefault(ra, set()).update(self.apart.pop(rb))
        return True


def account_keys(people: pd.DataFrame, accounts: pd.DataFrame) -> pd.DataFrame:
    """Shared keys tying records to accounts: the silos' own keys, and e-mail domains and company names that
    belong to exactly one CRM account (a domain several accounts use, like a free-mail one, proves nothing)."""
    own = people.dropna(subset=["anchor"])
    keys = [pd.DataFrame({"record_id": accounts["record_id"], "node": accounts["anchor"],
                          "method": "key: crm account"}),
            pd.DataFrame({"record_id": accounts["anchor"], "node": accounts["billing_anchor"],
                          "method": "key: billing account"}).dropna(),
            pd.DataFrame({"record_id": own["record_id"], "node": own["anchor"],
                          "method": "key: " + own["anchor"].str.split(":").str[0].map(KEY_NAMES)})]
    contacts = people[people["anchor"].str.startswith("acct:", na=False)]
    keys.append(_owned(people, people["email_domain"], contacts.index, contacts["anchor"], "key: e-mail domain"))
    company = people["company_norm"]
    names = accounts["account_name"].map(linkage.normalise_company)
    owners = pd.concat([pd.DataFrame({"value": company[contacts.index], "owner": contacts["anchor"]}),
                        pd.DataFrame({"value": names, "owner": accounts["anchor"]})])
    keys.append(_owned_by(people, company, owners, "key: company name"))
    return pd.concat(keys, ignore_index=True)


def _owned(people, values: pd.Series, owner_rows, owner_nodes: pd.Series, method: str) -> pd.DataFrame:
    owners = pd.DataFrame({"value": values[owner_rows], "owner": owner_nodes})
    return _owned_by(people, values, owners, method)


def _owned_by(people, values: pd.Series, owners: pd.DataFrame, method: str) -> pd.DataFrame:
    """Records whose value has exactly one owning account node, linked to that node."""
    per_value = owners.dropna().drop_duplicates().groupby("value")["owner"]
    unique_owner = per_value.first()[per_value.size() == 1]
    node = values.map(unique_owner)
    hit = node.notna()
    return pd.DataFrame({"record_id": people.loc[hit, "record_id"], "node": node[hit], "method": method})


def group_records(people: pd.DataFrame, accounts: pd.DataFrame, pairs: pd.DataFrame, threshold: float,
                  decisions: pd.DataFrame | None = None) -> pd.DataFrame:
    """record_id → group root, with how each record was attached (method) and the evidence's probability.

    A steward's `decisions` (decision, record_id_l, record_id_r) override the model: a link is an edge applied
    right after the shared keys, an unlink a cut no edge may cross. Edges are applied strongest first, so where
    other records still connect two unlinked ones, the edge skipped is the weakest of the path, the one that
    would have closed it."""
    decisions = NO_DECISIONS if decisions is None else decisions
    unlinks = decisions[decisions["decision"] == "unlink"]
    groups = Groups(zip(unlinks["record_id_l"], unlinks["record_id_r"], strict=True))
    how: dict[str, tuple[str, float]] = {}
    for rid, node, method in account_keys(people, accounts).itertuples(index=False):
        if groups.union(node, rid):
            how.setdefault(rid, (method, 1.0))
    links = decisions[decisions["decision"] == "link"].sort_values(["record_id_l", "record_id_r"])
    for left, right in links[["record_id_l", "record_id_r"]].itertuples(index=False):
        if groups.union(left, right):
            for rid in (left, right):
                how.setdefault(rid, ("steward: link", 1.0))
    # A total order, so equal-probability links are applied the same way on every run.
    ranked = pairs.sort_values(["match_probability", "record_id_l", "record_id_r"], ascending=[False, True, True])
    strong = ranked[ranked["match_probability"] >= threshold]
    for left, right, p, method in strong[["record_id_l", "record_id_r", "match_probability", "method"]].itertuples(
            index=False):
        if groups.union(left, right):
            for rid in (left, right):
                how.setdefault(rid, (method, float(p)))
    _attach_only_candidates(groups, how, ranked[ranked["match_probability"] < threshold])
    ids = pd.concat([accounts["record_id"], people["record_id"]], ignore_index=True)
    out = pd.DataFrame({"record_id": ids, "group": [groups.find(r) for r in ids]})
    out["method"] = [how.get(r, ("unlinked", np.nan))[0] for r in ids]
    out["match_probability"] = [how.get(r, ("unlinked", np.nan))[1] for r in ids]
    return out


def unheld(grouped: pd.DataFrame, decisions: pd.DataFrame) -> pd.DataFrame:
    """The decisions the grouping could not follow: a link across two CRM accounts or across an unlink (the
    cuts hold by construction, `Groups`)."""
    group = grouped.set_index("record_id")["group"]
    together = decisions["record_id_l"].map(group) == decisions["record_id_r"].map(group)
    return decisions[together != (decisions["decision"] == "link")]


def _attach_only_candidates(groups: Groups, how: dict[str, tuple[str, float]], weak: pd.DataFrame) -> None:
    """A group with no account yet joins the one account its weaker links point to, when they point to only one.

    A name-only support ticket is "Laura Morales" at one account, or at two: only the first is evidence.
    """
    candidates: dict[str, dict[str, tuple[str, float]]] = {}
    for left, right, p in weak[["record_id_l", "record_id_r", "match_probability"]].itertuples(index=False):
        for a, b in ((left, right), (right, left)):
            root_a, root_b = groups.find(a), groups.find(b)
            if groups.account[root_a] is None and groups.account[root_b] is not None:
                candidates.setdefault(root_a, {}).setdefault(root_b, (a, float(p)))
    for root, targets in candidates.items():
        if len(targets) == 1:
            (target, (member, p)), = targets.items()
            groups.union(target, root)
            how.setdefault(member, ("model: only candidate", p))


# ---------------------------------------------------------------- stable customer ids


@dataclass(frozen=True)
class Assignment:
    crosswalk: pd.DataFrame  # record_id, customer_id, method, match_probability
    events: pd.DataFrame  # kind (merge/split), customer_id, other_id, records


def assign_ids(grouped: pd.DataFrame, previous: pd.DataFrame, first_free: int = 1) -> Assignment:
    """Give each group a customer id, keeping previous ids: the majority owner keeps it; merges and splits
    are returned as events. New ids are numbered from past every previous one and from `first_free` (ids that
    were merged away, or are reserved by live identity, are never handed out again)."""
    old = grouped.merge(previous[["record_id", "customer_id"]], on="record_id", how="left")
    counts = old.dropna(subset=["customer_id"]).groupby(["customer_id", "group"]).size().rename("n").reset_index()
    owner = counts.sort_values(["n", "group"], ascending=[False, True]).drop_duplicates("customer_id")
    keep = owner.sort_values(["group", "n", "customer_id"], ascending=[True, False, True]).drop_duplicates("group")
    merged = owner[~owner["customer_id"].isin(keep["customer_id"])].merge(
        keep[["group", "customer_id"]], on="group", suffixes=("", "_survivor"))
    events = [pd.DataFrame({"kind": "merge", "customer_id": merged["customer_id_survivor"],
                            "other_id": merged["customer_id"], "records": merged["n"]})]
    ids = dict(zip(keep["group"], keep["customer_id"], strict=True))
    new_groups = grouped.loc[~grouped["group"].isin(ids), ["group", "record_id"]].groupby("group")["record_id"].min()
    start = max(_next_number(previous["customer_id"]), first_free)
    for offset, group in enumerate(new_groups.sort_values().index):
        ids[group] = f"C{start + offset:08d}"
    split = counts[counts["group"].isin(new_groups.index)].assign(new_id=lambda d: d["group"].map(ids))
    events.append(pd.DataFrame({"kind": "split", "customer_id": split["new_id"], "other_id": split["customer_id"],
                                "records": split["n"]}))
    crosswalk = grouped.assign(customer_id=grouped["group"].map(ids)).drop(columns="group")
    return Assignment(crosswalk, pd.concat(events, ignore_index=True))


def _next_number(existing: pd.Series) -> int:
    numbers = existing.dropna().str.extract(r"^C(\d+)$", expand=False).dropna().astype(int)
    return int(numbers.max()) + 1 if len(numbers) else 1


# ---------------------------------------------------------------- golden record


def golden_records(people: pd.DataFrame, accounts: pd.DataFrame, crosswalk: pd.DataFrame) -> pd.DataFrame:
    """One row per customer: per field, the highest-priority source, then the most recent non-null value."""
    rank = {s: i for i, s in enumerate(SOURCE_PRIORITY)}
    persons = people.assign(email=people["email_norm"], phone=people["phone_norm"],
                            person_name=(people["first_name"].fillna("") + " " + people["surname"].fillna(""))
                            .str.strip().replace("", None))
    frame = pd.concat([accounts.rename(columns={"account_name": "name"}), persons], ignore_index=True)
    frame = frame.merge(crosswalk[["record_id", "customer_id", "method"]], on="record_id")
    frame["rank"] = frame["source"].map(rank)
    frame = frame.sort_values(["customer_id", "rank", "seen_at"], ascending=[True, True, False])
    by = frame.groupby("customer_id", sort=True)
    first = by[["name", "company", "segment", "region", "person_name"]].first()
    return pd.DataFrame({
        "display_name": first["name"].fillna(first["company"]).fillna(first["person_name"]),
        "company": first["company"].where(first["segment"] != "consumer"),  # a consumer account's name is a person's
        "segment": first["segment"], "region": first["region"],
        "emails": _distinct(frame, "email"), "phones": _distinct(frame, "phone"), "sources": _distinct(frame, "source"),
        "records": by.size(),
        "first_seen": by["seen_at"].min(),
        "unlinked": (frame["method"] == "unlinked").groupby(frame["customer_id"]).all(),
    }).reset_index()


def _distinct(frame: pd.DataFrame, column: str) -> pd.Series:
    """Sorted distinct non-null values per customer (an empty list where there are none)."""
    values = frame[["customer_id", column]].dropna().drop_duplicates().sort_values(["customer_id", column])
    lists = values.groupby("customer_id")[column].agg(list)
    return lists.reindex(frame["customer_id"].unique()).map(lambda v: v if isinstance(v, list) else [])


# ---------------------------------------------------------------- the stage, and its tables in the warehouse

DDL = """
CREATE TABLE IF NOT EXISTS identity_crosswalk (source VARCHAR, source_key VARCHAR, record_id VARCHAR PRIMARY KEY,
    customer_id VARCHAR, method VARCHAR, match_probability DOUBLE, resolved_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS identity_events (recorded_at TIMESTAMP, kind VARCHAR, customer_id VARCHAR, other_id VARCHAR,
    records BIGINT);
ALTER TABLE identity_events ADD COLUMN IF NOT EXISTS cause VARCHAR;
CREATE TABLE IF NOT EXISTS identity_merges (customer_id VARCHAR PRIMARY KEY, merged_into VARCHAR, merged_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS identity_decisions (decided_at TIMESTAMP, decision VARCHAR, record_id_l VARCHAR,
    record_id_r VARCHAR, who VARCHAR, why VARCHAR);
"""
NO_DECISIONS = pd.DataFrame(columns=["decision", "record_id_l", "record_id_r"])


def decisions(con) -> pd.DataFrame:
    """The stewards' decisions in force: the latest per pair of records (record_id_l < record_id_r)."""
    con.execute(DDL)
    return con.execute("""SELECT * FROM identity_decisions
        QUALIFY row_number() OVER (PARTITION BY record_id_l, record_id_r ORDER BY decided_at DESC) = 1
        ORDER BY record_id_l, record_id_r""").df()


@dataclass(frozen=True)
class ResolveReport:
    records: int
    customers: int
    multi_record_customers: int
    unlinked: int
    merges: int
    splits: int
    methods: dict[str, int]
    live: dict[str, int] = field(default_factory=dict)  # live identity's records, customers and placed events it took
    decisions: int = 0  # stewards' decisions in force
    unheld: int = 0  # of them, the ones the grouping could not follow (see `unheld`)
    estimated: bool = True  # the model's parameters estimated by this run (else: the saved ones reused)
    engine: str = "duckdb"  # the engine splink ran on (`c360.core.engine`)


def resolve(con, model_path: Path, threshold: float = 0.95, seed: int = 42, ledger: Ledger | None = None,
            retrain: bool = False) -> ResolveReport:
    """Link every source record of the warehouse to a customer and write the identity tables.

    The model's parameters are those saved at `model_path`, estimated on the first run, with `retrain`, or when
    the stewards' links changed (`linker_for`). splink runs on the settings' engine (DuckDB or Spark); the
    grouping into customers and their ids are this module's, on the pairs it scores.

    With live identity's `ledger`, its decisions count as previous ids (a provisional customer keeps its id, or is
    merged into the customer its records join), its reserved numbers are not handed out, and afterwards what the
    warehouse now holds leaves it. The stewards' links are labels the model learns from, and their decisions
    override it (`group_records`)."""
    upgrade(con)
    raw, accounts = read_records(con)
    people, prepared = normalise(raw)
    decided = decisions(con)
    engine_name = engine.name()
    db_api = linkage.database(engine_name)
    try:
        linker, estimated = linker_for(prepared, model_path, decided, db_api, seed, retrain)
        pairs = score_people(prepared, linker)
    finally:
        linkage.release(db_api)
    grouped = group_records(people, accounts, pairs, threshold, decided)
    assignment = settle_ids(con, people, accounts, grouped, ledger, "resolve",
                            {"identity_records": prepared, "identity_links": pairs})
    events = assignment.events["kind"].value_counts()
    golden = con.execute("SELECT records, unlinked FROM identity_customers").df()
    return ResolveReport(
        records=len(grouped), customers=len(golden), multi_record_customers=int((golden["records"] > 1).sum()),
        unlinked=int(golden["unlinked"].sum()), merges=int(events.get("merge", 0)), splits=int(events.get("split", 0)),
        methods=grouped["method"].value_counts().to_dict(), live=ledger.settle(con) if ledger is not None else {},
        decisions=len(decided), unheld=len(unheld(grouped, decided)), estimated=estimated, engine=engine_name)


def stored_inputs(con) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """People, accounts and scored pairs of the last `resolve`, as it grouped them: its normalised records and
    links, and the records' source rows (records ingested since wait for the next resolve)."""
    raw, accounts = read_records(con)
    prepared = con.execute("SELECT * FROM identity_records").df().set_index("record_id")
    raw = raw[raw["record_id"].isin(prepared.index)].reset_index(drop=True)
    known = con.execute("SELECT record_id FROM identity_crosswalk WHERE source = 'crm/accounts'").df()["record_id"]
    pairs = con.execute("SELECT * FROM identity_links").df()
    return _with_normal(raw, prepared.loc[raw["record_id"]]), accounts[accounts["record_id"].isin(known)], pairs


def settle_ids(con, people: pd.DataFrame, accounts: pd.DataFrame, grouped: pd.DataFrame, ledger: Ledger | None,
               cause: str, tables: dict[str, pd.DataFrame], decision: pd.DataFrame | None = None) -> Assignment:
    """Give the groups their stable ids and write the identity tables (and `tables`, replaced, and a steward's
    `decision`, appended) in one transaction; merges and splits are recorded with their `cause`."""
    con.execute(DDL)
    previous = con.execute("SELECT record_id, customer_id FROM identity_crosswalk").df()
    with ledger.numbering(con) if ledger is not None else nullcontext() as numbering:
        if numbering is None:
            first_free = _next_number(con.execute("SELECT customer_id FROM identity_merges").df()["customer_id"])
        else:
            live = numbering.previous[~numbering.previous["record_id"].isin(previous["record_id"])]
            previous, first_free = pd.concat([previous, live], ignore_index=True), numbering.first_free
        assignment = assign_ids(grouped, previous, first_free)
        if numbering is not None:
            numbering.handed_out = _next_number(assignment.crosswalk["customer_id"]) - 1
    golden = golden_records(people, accounts, assignment.crosswalk)
    _write(con, assignment, cause, {"identity_customers": golden, **tables},
           NO_DECISIONS.head(0) if decision is None else decision)
    return assignment


def _write(con, assignment: Assignment, cause: str, tables: dict[str, pd.DataFrame], decision: pd.DataFrame) -> None:
    crosswalk = assignment.crosswalk
    crosswalk = crosswalk.assign(source=crosswalk["record_id"].str.split(":", n=1).str[0],
                                 source_key=crosswalk["record_id"].str.split(":", n=1).str[1])
    frames = {"crosswalk": crosswalk, "events": assignment.events.assign(cause=cause), "decision": decision,
              **tables}
    for name, frame in frames.items():
        con.register(f"new_{name}", frame)
    con.begin()
    try:
        con.execute("DELETE FROM identity_crosswalk")
        con.execute("""INSERT INTO identity_crosswalk SELECT source, source_key, record_id, customer_id, method,
                       match_probability, now() FROM new_crosswalk""")
        con.execute("""INSERT INTO identity_events (recorded_at, kind, customer_id, other_id, records, cause)
                       SELECT now(), kind, customer_id, other_id, records, cause FROM new_events""")
        # the merged id answers with the survivor's profile from now on (serving)
        con.execute("INSERT OR REPLACE INTO identity_merges SELECT other_id, customer_id, now() FROM new_events "
                    "WHERE kind = 'merge'")
        for name in tables:
            con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM new_{name}")
        con.execute("INSERT INTO identity_decisions BY NAME SELECT now() AS decided_at, * FROM new_decision")
        con.commit()
    except BaseException:
        con.rollback()
        raise


# ---------------------------------------------------------------- explaining a link


@dataclass(frozen=True)
class Explanation:
    records: pd.DataFrame  # the asked records: record_id, customer_id, method, match_probability
    pair: tuple[str, str] | None  # the pair whose match weights follow
    weights: pd.DataFrame  # splink waterfall: column_name, value_l, value_r, level, bayes_factor, match_weight
    decisions: pd.DataFrame  # stewards' decisions on the records or their customers' records: who, why, when
    events: pd.DataFrame  # the customers' merges and splits, with their cause (resolve or steward)


def explain(con, model_path, record_ids: list[str]) -> Explanation:
    """Why records belong to their customer: how each was attached, and the match weights of a pair — the two
    records asked for, or one record and its strongest link within its customer — with the stewards' decisions
    and the merges and splits that concern them."""
    asked = con.execute("SELECT record_id, customer_id, method, match_probability FROM identity_crosswalk "
                        "WHERE record_id IN (SELECT unnest($ids))", {"ids": record_ids}).df()
    missing = sorted(set(record_ids) - set(asked["record_id"]))
    if missing:
        raise KeyError(f"not in the crosswalk (run `c360 resolve` first?): {', '.join(missing)}")
    history = _history(con, record_ids, sorted(set(asked["customer_id"])))
    pair = (record_ids[0], record_ids[1]) if len(record_ids) == 2 else _strongest_link(con, record_ids[0])
    if pair is None:
        return Explanation(asked, None, pd.DataFrame(), *history)
    prepared = con.execute("SELECT * FROM identity_records").df()
    linker = linkage.load_linker(prepared, model_path)
    return Explanation(asked, pair, linkage.explain_pair(linker, prepared, *pair), *history)


def _history(con, record_ids: list[str], customers: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The decisions touching the records or their customers' records, and the customers' identity events."""
    params = {"ids": record_ids, "customers": customers}
    decided = con.execute("""SELECT decided_at, decision, record_id_l, record_id_r, who, why FROM identity_decisions
        WHERE list_has_any([record_id_l, record_id_r], list_concat($ids, (SELECT list(record_id) FROM
              identity_crosswalk WHERE customer_id IN (SELECT unnest($customers)))))
        ORDER BY decided_at""", params).df() if warehouse.has_table(con, "identity_decisions") else pd.DataFrame()
    events = con.execute("""SELECT * FROM identity_events WHERE customer_id IN (SELECT unnest($customers))
        OR other_id IN (SELECT unnest($customers)) ORDER BY recorded_at""", {"customers": customers}).df()
    return decided, events


def _strongest_link(con, record_id: str) -> tuple[str, str] | None:
    row = con.execute("""
        SELECT l.record_id_l, l.record_id_r FROM identity_links l
        JOIN identity_crosswalk a ON a.record_id = l.record_id_l
        JOIN identity_crosswalk b ON b.record_id = l.record_id_r
        WHERE $id IN (l.record_id_l, l.record_id_r) AND a.customer_id = b.customer_id
        ORDER BY l.match_probability DESC LIMIT 1""", {"id": record_id}).fetchone()
    return (row[0], row[1]) if row else None


# ---------------------------------------------------------------- measuring against ground truth


def evaluate(con, truth: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pairwise precision / recall / F1 of the crosswalk's customers against the true accounts, and per source
    the share of records in a wrong customer or away from their account's main customer. `truth` has table_id,
    key and account (the generator's ground_truth/records.parquet)."""
    crosswalk = con.execute("SELECT record_id, customer_id AS cluster_id FROM identity_crosswalk").df()
    truth = truth.assign(record_id=truth["table_id"] + ":" + truth["key"].astype(str))
    accounts = truth[["record_id", "account"]].rename(columns={"account": "entity_id"})
    overall = pd.DataFrame([{"level": "customer (account)", **linkage.pairwise_metrics(crosswalk, accounts)}])
    joined = crosswalk.merge(truth[["record_id", "table_id", "account"]], on="record_id")
    majority = joined.groupby("cluster_id")["account"].agg(lambda s: s.mode().iloc[0])
    home = joined.groupby("account")["cluster_id"].agg(lambda s: s.mode().iloc[0])
    joined["wrong_customer"] = joined["account"] != joined["cluster_id"].map(majority)
    joined["away_from_home"] = joined["cluster_id"] != joined["account"].map(home)
    per_source = joined.groupby("table_id")[["wrong_customer", "away_from_home"]].mean().reset_index()
    return overall, per_source
