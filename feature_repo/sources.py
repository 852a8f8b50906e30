from feast import FileSource
from feast.data_format import ParquetFormat


def customer_features(path: str) -> FileSource:
    """Feature snapshots written by `c360 features build`: one Parquet file per as-of date, under `path`."""
    return FileSource(
        name="customer_features",
        path=f"{path}/*.parquet",
        file_format=ParquetFormat(),
        timestamp_field="as_of",
        description="Point-in-time customer features; a row as of T uses only data strictly before T.",
    )
