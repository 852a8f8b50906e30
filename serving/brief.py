"""The call brief: at most 80 words a customer-success manager reads before calling, composed from the profile.

Deterministic and traceable: every statement is rendered from one field of the profile, and the brief lists
those fields as `facts` (`field`: its dotted path in the profile, `value`: the field's value, `text`: how the
brief words it), so a reader — or a test — can check each number and category against the profile it came from.

It reads the profile *as the caller's role sees it* (`serving.masking`): a role without personal data gets a
profile whose name and company are masked or absent, so its brief names no person and no company.

Five parts, in the order a call needs them — who the customer is, where they stand, what changed recently, the top
risk and its main reason, the recommended action — each left out when its fields are empty or neutral (no red
flag, a flat usage trend, a low churn risk's reasons). When the words exceed `MAX_WORDS`, the least needed pieces
go first (see `Part.rank`).

An optional rewrite into smoother prose through an OpenAI-compatible endpoint (`C360_BRIEF_ENDPOINT`, its
`/chat/completions`), off by default: without an endpoint `of` is `compose` and opens no connection. With one, the
endpoint receives the masked brief — no name, no company — unless the admin setting `C360_BRIEF_SEND_PERSONAL`
allows the brief the role sees; its answer replaces the text (`source: llm`, the facts still those of the rules'
text, which stays in `rules_text`). A failure, a timeout or an answer longer than `MAX_WORDS` keeps the rules'
brief and says why in `note`. Answers are kept per sent text, so the page's polling does not call it again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from c360.core.settings import Settings
from c360.serving import masking
from c360.serving.access import View
from c360.serving.masking import MASK

log = logging.getLogger(__name__)

MAX_WORDS = 80
TREND_SHOWN = 0.25  # a usage trend smaller than this (either way) is not news
FLAGS_SHOWN = 3
TIMEOUT_SECONDS = 5.0
INSTRUCTION = (f"Rewrite this call brief for a customer-success manager as fluent prose of at most {MAX_WORDS} "
               "words. Keep every number, name and category exactly as given; add nothing.")


@dataclass
class Part:
    """A piece of the brief: its words, the facts they state, and its rank (higher goes first when too long)."""

    text: str
    facts: list[dict[str, Any]] = field(default_factory=list)
    rank: int = 0


def _get(profile: dict[str, Any], path: str) -> Any:
    value: Any = profile
    for key in path.split("."):
        if isinstance(value, list):
            value = value[int(key)] if key.isdigit() and int(key) < len(value) else None
        elif isinstance(value, dict):
            value = value.get(key)
        else:
            return None
    return None if value == MASK else value


def _words(value: Any) -> str:
    return str(value).replace("_", " ")


class _Facts:
    """Renders fields of one profile into text, recording each as a fact."""

    def __init__(self, profile: dict[str, Any]) -> None:
        self.profile = profile
        self.used: list[dict[str, Any]] = []

    def get(self, path: str) -> Any:
        return _get(self.profile, path)

    def say(self, path: str, text: str) -> str:
        self.used.append({"field": path, "value": self.get(path), "text": text})
        return text

    def part(self, text: str, rank: int = 0) -> Part:
        facts, self.used = self.used, []
        return Part(text, facts, rank)


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _tenure(days: float) -> str:
    return f"{days:.0f} days" if days < 365 else f"{days / 365.25:.1f} years"


def who(f: _Facts) -> Part:
    name, company = f.get("identity.display_name"), f.get("identity.company")
    subject = f.say("identity.display_name", str(name)) if name else ""
    if company and company != name:
        subject = f"{subject} at {f.say('identity.company', str(company))}" if subject else \
            f.say("identity.company", str(company))
    segment = f.get("identity.segment")
    kind = f"{_article(segment)} {f.say('identity.segment', _words(segment))} customer" if segment else "a customer"
    text = f"{subject}, {kind}" if subject else kind[0].upper() + kind[1:]
    tenure = f.get("present.standing.tenure_days")
    if tenure is not None:
        text += f" for {f.say('present.standing.tenure_days', _tenure(float(tenure)))}"
    plan, seats = f.get("present.standing.plan"), f.get("present.standing.seats")
    if plan:
        text += f", on the {f.say('present.standing.plan', _words(plan))} plan"
        if seats:
            count = f.say("present.standing.seats", f"{seats:.0f}")
            text += f" ({count} seat{'s' if seats != 1 else ''})"
    return f.part(text + ".")


def standing(f: _Facts) -> Part | None:
    band, score = f.get("present.health.health_band"), f.get("present.health.health_score")
    stage = f.get("present.standing.lifecycle_stage")
    pieces = []
    if band:
        health = f"health {f.say('present.health.health_band', _words(band))}"
        if score is not None:
            health += f" ({f.say('present.health.health_score', f'{score:.0f}')})"
        pieces.append(health)
    if stage:
        pieces.append(f"lifecycle stage {f.say('present.standing.lifecycle_stage', _words(stage))}")
    if not pieces:
        return None
    text = ", ".join(pieces)
    return f.part(text[0].upper() + text[1:] + ".")


def changes(f: _Facts) -> list[Part]:
    """What changed recently: live events not folded yet, the red flags raised, a clear usage trend."""
    parts = []
    events = f.get("past.live_events") or []
    if events:
        count = f.say("past.live_events", f"{len(events)}")
        kinds = sorted({e["kind"] for e in events})
        parts.append(f.part(f"{count} new event{'s' if len(events) != 1 else ''} ({', '.join(map(_words, kinds))})",
                            rank=3))
    flags = f.get("present.red_flags") or []
    if flags:
        named = [f.say(f"present.red_flags.{i}.code", _words(flag["code"])) for i, flag in
                 enumerate(flags[:FLAGS_SHOWN])]
        parts.append(f.part(f"red flag{'s' if len(named) > 1 else ''} {', '.join(named)}", rank=1))
    trend = f.get("past.activity.usage_trend")
    if trend is not None and abs(trend) >= TREND_SHOWN:
        shown = f.say("past.activity.usage_trend", f"{abs(trend) * 100:.0f} %")
        parts.append(f.part(f"active days {'down' if trend < 0 else 'up'} {shown} on the previous month", rank=2))
    return parts


def risk(f: _Facts) -> Part | None:
    band, probability = f.get("future.churn.band"), f.get("future.churn.probability")
    if not band or probability is None:
        return None
    text = f"Churn risk {f.say('future.churn.band', _words(band))}"
    horizon = f.get("future.churn.horizon_days")
    text += f" ({f.say('future.churn.probability', f'{probability * 100:.0f} %')}"
    text += f" in {f.say('future.churn.horizon_days', str(horizon))} days)" if horizon else ")"
    reasons = f.get("future.churn.reasons") or []
    top = next((i for i, r in enumerate(reasons) if r.get("direction") == "raises"), None)
    if band != "low" and top is not None:
        base = f"future.churn.reasons.{top}"
        text += f", mainly {f.say(base + '.description', str(reasons[top]['description']))}"
        if reasons[top].get("value") is not None:
            text += f" ({f.say(base + '.value', str(reasons[top]['value']))})"
    return f.part(text + ".")


def action(f: _Facts) -> Part | None:
    chosen = f.get("future.next_best_action.action")
    if not chosen:
        return None
    return f.part(f"Next best action: {f.say('future.next_best_action.action', _words(chosen))}.")


def _text(head: list[Part], news: list[Part], tail: list[Part]) -> str:
    recently = [f"Recently: {'; '.join(p.text for p in news)}."] if news else []
    return " ".join([*(p.text for p in head), *recently, *(p.text for p in tail)])


def compose(profile: dict[str, Any]) -> dict[str, Any]:
    """The brief of `profile` (as the caller's role sees it): text, the facts it states, `source: rules` (the same
    keys as a rewritten brief's, `rules_text` and `note` null)."""
    f = _Facts(profile)
    head = [p for p in (who(f), standing(f)) if p is not None]
    news = changes(f)
    tail = [p for p in (risk(f), action(f)) if p is not None]
    while news and len(_text(head, news, tail).split()) > MAX_WORDS:
        news.remove(max(news, key=lambda p: p.rank))
    return {"text": _text(head, news, tail), "facts": [fact for p in (*head, *news, *tail) for fact in p.facts],
            "source": "rules", "rules_text": None, "note": None}


# ---------------------------------------------------------------- the optional rewrite


def of(out: dict[str, Any], view: View, s: Settings) -> dict[str, Any]:
    """The brief `view` reads of the profile `out`: composed from what it sees, rewritten when an endpoint is set."""
    rules = compose(masking.profile(out, view))
    if not s.brief_endpoint:
        return rules
    sent = rules if s.brief_send_personal or view != "full" else compose(masking.profile(out, "masked"))
    return rewrite(rules, sent["text"], s)


def payload(text: str, s: Settings) -> dict[str, Any]:
    """The chat-completions request that asks the endpoint to rewrite `text`."""
    return {"model": s.brief_model, "temperature": 0,
            "messages": [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": text}]}


def rewrite(rules: dict[str, Any], text: str, s: Settings) -> dict[str, Any]:
    """`rules` with its text replaced by the endpoint's rewrite of `text`, or kept (with a `note`) on a failure."""
    import httpx

    assert s.brief_endpoint
    key = s.brief_api_key.get_secret_value() if s.brief_api_key else None
    try:
        said = _rewritten(s.brief_endpoint.rstrip("/"), key, json.dumps(payload(text, s), sort_keys=True))
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:
        log.warning("call brief not rewritten: %s", type(e).__name__)  # the exception's text may quote the brief
        return rules | {"note": f"the rewrite failed ({type(e).__name__}): composed by rules"}
    if not said or len(said.split()) > MAX_WORDS:
        return rules | {"note": f"the rewrite was empty or over {MAX_WORDS} words: composed by rules"}
    return rules | {"text": said, "source": "llm", "rules_text": rules["text"]}


@lru_cache(maxsize=1024)  # per sent request: a failure raises and is not kept
def _rewritten(endpoint: str, key: str | None, body: str) -> str:
    import httpx

    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    response = httpx.post(f"{endpoint}/chat/completions", content=body, headers=headers, timeout=TIMEOUT_SECONDS)
    response.raise_for_status()
    return str(response.json()["choices"][0]["message"]["content"]).strip()
