"""The profile page for customer-success managers, served at `/ui`.

One static file, `serving/static/profile.html`: inline CSS and vanilla JavaScript, no build step and nothing
fetched from elsewhere. It reads the service's own API — `GET /customers?email=` to find a customer by e-mail,
`GET /customers/{id}/profile?details=true` for the profile — so the page and the API cannot disagree. The profile's
keys are identifiers; the page shows their labels (`features.profile.label`, also the API schema's titles), filled
into the page here.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files

from c360.features.profile import keys, label

MARK = "/* labels */{}"


@cache
def page() -> str:
    """The page's HTML with the profile's labels (built once per process)."""
    html = files("c360.serving").joinpath("static", "profile.html").read_text(encoding="utf-8")
    return html.replace(MARK, json.dumps({key: label(key) for key in keys()}))
