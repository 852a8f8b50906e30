from typing import Any

from feast import FileSource
from feast.data_format import ParquetFormat
from feast.data_source import DataSource
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource


def parquet_source(engine: str, *, name: str, path: str, timestamp_field: str, description: str,
                   created_timestamp_column: str = "") -> DataSource:
    """Parquet files under `path` (a glob) as a source of the offline store of `engine` ("duckdb": Feast's
    FileSource, "spark": its SparkSource, which only its Spark offline store reads)."""
    fields: dict[str, Any] = {"name": name, "path": path, "timestamp_field": timestamp_field,
                              "created_timestamp_column": created_timestamp_column, "description": description}
    if engine == "spark":
        return SparkSource(file_format="parquet", **fields)
    return FileSource(file_format=ParquetFormat(), **fields)


def customer_features(path: str, engine: str) -> DataSource:
    """Feature snapshots written by `c360 features build`: one Parquet file per as-of date, under `path`."""
    return parquet_source(
        engine,
        name="customer_features",
        path=f"{path}/*.parquet",
        timestamp_field="as_of",
        description="Point-in-time customer features; a row as of T uses only data strictly before T.",
    )
