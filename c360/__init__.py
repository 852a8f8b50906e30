"""c360: Customer 360, predictive. One package in layers, bottom to top (the import contract in pyproject.toml):

* `c360.core` — settings, DuckDB connections and the warehouse, the data contract, the feature definitions;
* `c360.feature_repo` — the Feast definitions;
* `c360.features` — generate, ingest, identity, feature computation, the feature store;
* `c360.training` — the models, tracked in MLflow;
* `c360.serving` — batch scores and the BentoML service;
* `c360.cli` — the `c360` command.
"""
