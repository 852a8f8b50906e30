"""Masking by role (`serving.masking`): only fields declared not personal pass, so a new field is masked until
someone declares it harmless."""

from __future__ import annotations

from c360.features.details import LISTS
from c360.serving.masking import DETAILS_NOT_PERSONAL, MASK, profile

PROFILE = {"customer_id": "C1", "past": {"activity": {"logins_30d": 3}}, "future": {"churn": {"probability": 0.2}},
           "identity": {"customer_id": "C1", "display_name": "Jane Doe", "emails": ["jane@example.com", "j@x.io"],
                        "segment": "smb", "nickname": "JD"},
           "details": {"contacts": [{"name": "Jane Doe", "role": "admin", "email": None, "pronouns": "she"}],
                       "a_new_list": [{"happened_at": "2026-01-01", "note": "called Jane"}]}}


def test_analysts_see_only_what_is_declared_not_personal() -> None:
    shown = profile(PROFILE, "masked")
    assert shown["identity"] == {"customer_id": "C1", "display_name": MASK, "emails": [MASK, MASK],
                                 "segment": "smb", "nickname": MASK}
    assert shown["details"]["contacts"] == [{"name": MASK, "role": "admin", "email": None, "pronouns": MASK}]
    assert shown["details"]["a_new_list"] == [{"happened_at": MASK, "note": MASK}]  # an undeclared list: all
    assert shown["past"] == PROFILE["past"] and shown["future"] == PROFILE["future"]
    assert PROFILE["identity"]["display_name"] == "Jane Doe"  # the original is left as it was


def test_services_see_no_identity_and_no_lists_and_the_full_view_everything() -> None:
    assert profile(PROFILE, "anonymous") == {k: v for k, v in PROFILE.items() if k not in ("identity", "details")}
    assert profile(PROFILE, "full") is PROFILE


def test_every_detail_list_is_declared() -> None:
    """A list `features.details` adds has its columns reviewed here (undeclared, every column would be masked)."""
    assert set(DETAILS_NOT_PERSONAL) == set(LISTS)
