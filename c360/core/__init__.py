"""The bottom layer: settings, DuckDB connections and the warehouse, the data contract, the feature definitions."""
