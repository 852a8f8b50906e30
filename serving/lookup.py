"""Finding customers by e-mail address in the warehouse's identity tables (a plain function the service calls).

The golden record (`identity_customers.emails`) keeps every address of a customer's source records, normalised as
identity resolution normalises them (`features.linkage.normalise_email`: lowercased, `+tag` dropped), so an address
typed as `Jane.Doe+crm@Example.com` finds the customer whose records say `jane.doe@example.com`.
"""

from __future__ import annotations

from typing import Any

from c360.core.settings import Settings
from c360.features.linkage import normalise_email
from c360.serving.errors import NotFound
from c360.serving.online import warehouse

# What the service accepts as an e-mail address (422 otherwise): one @, a dotted domain, no spaces.
EMAIL = r"^[A-Za-z0-9._%+'-]{1,64}@[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})+$"


def normalised(email: str) -> str:
    """The address as identity resolution stores it; lowercased when the validator refuses it (it then matches
    nothing, which is a 404, not a malformed request)."""
    return normalise_email(email) or email.strip().lower()


def customers_by_email(s: Settings, email: str) -> dict[str, Any]:
    """`{"email": normalised address, "customer_ids": [...]}` of the customers with that address, sorted;
    NotFound when there is none, Unavailable when the warehouse cannot answer."""
    address = normalised(email)
    with warehouse(s) as con:
        rows = con.execute("SELECT customer_id FROM identity_customers WHERE list_contains(emails, ?) "
                           "ORDER BY customer_id", [address]).fetchall()
    if not rows:
        raise NotFound(f"no customer with e-mail {address}")
    return {"email": address, "customer_ids": [str(r[0]) for r in rows]}
