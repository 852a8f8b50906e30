"""People behind the accounts, and the messy ways each silo writes them down."""

from __future__ import annotations

import numpy as np
import pandas as pd
from faker.providers.person.en_US import Provider as PersonNames

NICKNAMES = {
    "Robert": "Bob", "William": "Bill", "Elizabeth": "Liz", "Richard": "Dick", "James": "Jim",
    "Michael": "Mike", "Christopher": "Chris", "Jennifer": "Jen", "Katherine": "Kate", "Margaret": "Peggy",
    "Thomas": "Tom", "Joseph": "Joe", "Daniel": "Dan", "Matthew": "Matt", "Anthony": "Tony",
    "Jessica": "Jess", "Patricia": "Pat", "Susan": "Sue", "Deborah": "Deb", "Rebecca": "Becky",
    "Samantha": "Sam", "Nicholas": "Nick", "Benjamin": "Ben", "Jonathan": "Jon", "Steven": "Steve",
    "Edward": "Ed", "Timothy": "Tim", "Kenneth": "Ken", "Ronald": "Ron", "Andrew": "Andy",
    "Alexander": "Alex", "Gregory": "Greg", "Victoria": "Vicky", "Catherine": "Cathy", "Abigail": "Abby",
}
PERSONAL_DOMAINS = ("gmail.com", "yahoo.com", "outlook.com", "hotmail.com", "icloud.com")
TITLES = {
    "admin": ("IT Manager", "Operations Lead", "Systems Administrator"),
    "billing": ("Finance Manager", "Accountant", "Controller"),
    "end_user": ("Analyst", "Engineer", "Consultant", "Coordinator", "Specialist"),
    "executive_sponsor": ("VP Operations", "CFO", "COO", "Head of Sales"),
}
PHONE_PLANS = {  # region: (country code, area codes, subscriber digits)
    "NA": ("1", ("212", "415", "312", "617", "206", "303", "512", "646", "305", "404"), 7),
    "EMEA": ("44", ("20",), 8),
    "APAC": ("61", ("2", "3"), 8),
    "LATAM": ("55", ("11", "21"), 9),
}
AGE_BANDS = ("18-29", "30-44", "45-59", "60+")
AGE_SHARE = (0.22, 0.30, 0.27, 0.21)
AGE_STREAM = 0xA6EBA2D  # the age bands' own word in the seed sequence
SUFFIXES = ("Inc", "LLC", "Group", "Ltd", "Partners", "Labs", "Systems", "Co")
INDUSTRIES = ("software", "retail", "finance", "healthcare", "manufacturing", "education", "media", "logistics")


def _weighted(rng: np.random.Generator, table: dict[str, float], n: int) -> np.ndarray:
    names = np.asarray(list(table))
    p = np.asarray(list(table.values()), dtype=float)
    return names[rng.choice(len(names), n, p=p / p.sum())]


def unique(addresses: np.ndarray, taken: set[str]) -> np.ndarray:
    """Make e-mail addresses (or domains) unique like real ones: a taken one gets a number before '@' / '.'."""
    out = []
    for address in addresses:
        head, sep, tail = address.rpartition("@") if "@" in address else address.partition(".")
        candidate, k = address, 1
        while candidate in taken:
            k += 1
            candidate = f"{head}{k}{sep}{tail}"
        taken.add(candidate)
        out.append(candidate)
    return np.asarray(out, dtype=object)


def companies(rng: np.random.Generator, accounts: pd.DataFrame, taken: set[str]) -> pd.DataFrame:
    n = len(accounts)
    last = _weighted(rng, PersonNames.last_names, n)
    other = _weighted(rng, PersonNames.last_names, n)
    suffix = np.asarray(SUFFIXES)[rng.integers(0, len(SUFFIXES), n)]
    name = np.where(rng.random(n) < 0.7, np.char.add(np.char.add(last, " "), suffix),
                    np.char.add(np.char.add(last, "-"), other))
    slug = pd.Series(name).str.lower().str.replace(r"[^a-z]", "", regex=True)
    return pd.DataFrame({
        "account": accounts["account"].to_numpy(),
        "company": name,
        "domain": unique((slug + "." + np.where(rng.random(n) < 0.8, "com", "io")).to_numpy(), taken),
        "industry": np.asarray(INDUSTRIES)[rng.integers(0, len(INDUSTRIES), n)],
    })


def people(rng: np.random.Generator, accounts: pd.DataFrame, first_person: int) -> pd.DataFrame:
    """Everyone at each account, with a role; the first person of an account is its admin."""
    seg = accounts["segment"].to_numpy()
    size = np.where(seg == "consumer", 1, np.where(seg == "smb", 1 + rng.binomial(2, 0.4, len(seg)),
                                                 2 + rng.binomial(4, 0.4, len(seg))))
    account_row = np.repeat(np.arange(len(accounts)), size)
    rank = np.arange(len(account_row)) - np.repeat(np.cumsum(size) - size, size)
    n = len(account_row)
    role = np.where(rank == 0, "admin", np.where(rank == 1, "billing", np.where(
        rank == 2, "executive_sponsor", "end_user")))
    female = rng.random(n) < 0.5
    first = np.where(female, _weighted(rng, PersonNames.first_names_female, n),
                     _weighted(rng, PersonNames.first_names_male, n))
    return pd.DataFrame({
        "person": np.arange(first_person, first_person + n),
        "account_row": account_row,
        "rank": rank,
        "role": role,
        "first_name": first,
        "last_name": _weighted(rng, PersonNames.last_names, n),
        "title": [TITLES[r][i % len(TITLES[r])] for r, i in zip(role, rng.integers(0, 99, n), strict=True)],
    })


def age_bands(rng: np.random.Generator, persons: pd.DataFrame, accounts: pd.DataFrame) -> np.ndarray:
    """Each consumer's age band (None for people at business accounts), a sensitive attribute for fairness reviews.

    Drawn from `rng`, a stream of its own, so the rest of the world of a seed stays as it was. The band follows
    the account's traits, never the other way round: younger people tend to use more of the product and to be more
    price-sensitive, older ones less. Age itself moves no outcome: any difference in churn or value between bands
    comes through those traits, so a model that treats one band worse does so by its own fault."""
    acc = accounts.iloc[persons["account_row"].to_numpy()]
    older = np.asarray([-1.0, -0.35, 0.35, 1.0])  # how far each band leans to the older end
    lean = 1.5 * (acc["adoption"].to_numpy() - 0.45) + 1.2 * (acc["price_sensitivity"].to_numpy() - 0.5)
    logits = np.log(AGE_SHARE)[None, :] - lean[:, None] * older[None, :]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pick = np.minimum((rng.random(len(p))[:, None] > p.cumsum(axis=1)).sum(axis=1), len(AGE_BANDS) - 1)
    band = np.asarray(AGE_BANDS, dtype=object)[pick]
    band[acc["segment"].to_numpy() != "consumer"] = None
    return band


def contact_details(rng: np.random.Generator, persons: pd.DataFrame, accounts: pd.DataFrame,
                    firms: pd.DataFrame, taken: set[str]) -> pd.DataFrame:
    """Each person's true e-mails and phone, as parts a silo can format its own way."""
    n = len(persons)
    row = persons["account_row"].to_numpy()
    consumer = (accounts["segment"].to_numpy() == "consumer")[row]
    first = persons["first_name"].str.lower().str.replace(r"[^a-z]", "", regex=True)
    last = persons["last_name"].str.lower().str.replace(r"[^a-z]", "", regex=True)
    style = rng.integers(0, 3, n)
    local = np.where(style == 0, first + "." + last, np.where(style == 1, first.str[0] + last, first + last.str[0]))
    personal = np.where(rng.random(n) < 0.5, first + "." + last, first + last + rng.integers(1, 99, n).astype(str))
    personal = unique(personal + "@" + np.asarray(PERSONAL_DOMAINS)[rng.integers(0, len(PERSONAL_DOMAINS), n)],
                      taken)
    work = unique(local + "@" + firms["domain"].to_numpy()[row], taken)
    cc, area, sub = _phones(rng, accounts["region"].to_numpy()[row])
    return persons.assign(
        work_email=np.where(consumer, personal, work), personal_email=personal,
        phone_cc=cc, phone_area=area, phone_sub=sub,
    )


def _phones(rng: np.random.Generator, regions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(regions)
    cc, area, sub = (np.empty(n, dtype=object) for _ in range(3))
    for region, (code, areas, digits) in PHONE_PLANS.items():
        m = regions == region
        k = int(m.sum())
        cc[m] = code
        area[m] = np.asarray(areas)[rng.integers(0, len(areas), k)]
        first_digit = rng.integers(2, 10, k).astype(str)
        rest = rng.integers(0, 10 ** (digits - 1), k)
        sub[m] = np.char.add(first_digit, np.char.zfill(rest.astype(str), digits - 1))
    return cc, area, sub


def format_phone(cc: str, area: str, sub: str, style: int) -> str:
    head, tail = sub[: len(sub) - 4], sub[-4:]
    return (
        f"+{cc} {area} {head} {tail}",
        f"+{cc}{area}{sub}",
        f"({area}) {head}-{tail}" if cc == "1" else f"0{area} {head} {tail}",
        f"{area}.{head}.{tail}" if cc == "1" else f"+{cc}-{area}-{sub}",
    )[style]


def typo(rng: np.random.Generator, word: str) -> str:
    if len(word) < 3:
        return word
    i = int(rng.integers(1, len(word) - 1))
    op = rng.integers(0, 4)
    if op == 0:
        return word[:i] + word[i + 1:]
    if op == 1:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if op == 2:
        return word[:i] + chr(int(rng.integers(97, 123))) + word[i + 1:]
    return word[:i] + word[i] + word[i:]


class Scribe:
    """Writes a person down the way one silo does: typos, nicknames, missing and alternative details.

    The rates are the silo's habits: a support desk often lacks a phone, a CRM rarely lacks an e-mail.
    """

    def __init__(self, rng: np.random.Generator, *, typo_rate: float = 0.06, nickname_rate: float = 0.1,
                 missing_email: float = 0.0, alt_email: float = 0.08, missing_phone: float = 0.5,
                 missing_name: float = 0.0):
        self.rng = rng
        self.typo_rate, self.nickname_rate = typo_rate, nickname_rate
        self.missing_email, self.alt_email = missing_email, alt_email
        self.missing_phone, self.missing_name = missing_phone, missing_name

    def names(self, first: pd.Series, last: pd.Series) -> tuple[list, list]:
        r = self.rng.random((len(first), 4))
        out_first: list[str | None] = []
        out_last: list[str | None] = []
        for (f, l_), (p_nick, p_typo_f, p_typo_l, p_missing) in zip(zip(first, last, strict=True), r,
                                                                    strict=True):
            if p_missing < self.missing_name:
                out_first.append(None)
                out_last.append(None)
                continue
            if p_nick < self.nickname_rate and f in NICKNAMES:
                f = NICKNAMES[f]
            out_first.append(typo(self.rng, f) if p_typo_f < self.typo_rate else f)
            out_last.append(typo(self.rng, l_) if p_typo_l < self.typo_rate else l_)
        return out_first, out_last

    def emails(self, people: pd.DataFrame) -> np.ndarray:
        r = self.rng.random((len(people), 3))
        email = np.where(r[:, 0] < self.alt_email, people["personal_email"], people["work_email"]).astype(object)
        shout = r[:, 2] < 0.03
        email[shout] = np.char.upper(email[shout].astype(str))
        email[r[:, 1] < self.missing_email] = None
        return email

    def phones(self, people: pd.DataFrame) -> list:
        styles = self.rng.integers(0, 4, len(people))
        missing = self.rng.random(len(people)) < self.missing_phone
        return [None if m else format_phone(c, a, s, int(st)) for c, a, s, st, m in zip(
            people["phone_cc"], people["phone_area"], people["phone_sub"], styles, missing, strict=True)]
