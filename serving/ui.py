"""The profile page for customer-success managers, served at `/ui`.

One static file, `serving/static/profile.html`: inline CSS and vanilla JavaScript, no build step and nothing
fetched from elsewhere. It reads the service's own API — `GET /customers?email=` to find a customer by e-mail,
`GET /customers/{id}/profile?details=true` for the profile — so the page and the API cannot disagree.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def page() -> str:
    """The page's HTML (read once per process)."""
    return files("c360.serving").joinpath("static", "profile.html").read_text(encoding="utf-8")
