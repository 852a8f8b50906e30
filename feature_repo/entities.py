from feast import Entity, ValueType

customer = Entity(
    name="customer",
    join_keys=["customer_id"],
    value_type=ValueType.STRING,
    description="A customer account as resolved by `c360 resolve` (identity_crosswalk.customer_id).",
)
