"""Settings: `C360_*` environment variables, then an optional YAML file (`C360_CONFIG`), then defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="C360_", extra="ignore")

    home: Path = Field(Path(".c360"), description="where all run state lives (warehouse, data, models)")
    config: Path | None = Field(None, description="optional YAML file with any of these settings")
    customers: int = Field(20_000, ge=1, description="demo size: customers to generate")
    seed: int = Field(42, description="demo seed")
    corrupt_rate: float = Field(0.005, ge=0, le=0.5, description="demo share of rows with an injected fault")
    match_threshold: float = Field(0.95, gt=0, lt=1, description="match probability that links two people")
    online_store: Literal["c360", "sqlite", "redis"] = Field(
        "c360", description="Feast online store: c360 (SQLite, one row per customer), sqlite (Feast's), redis (c360's "
                            "Redis store, Feast's layout with a bulk write path)")
    engine: Literal["duckdb", "spark"] = Field(
        "duckdb", description="engine of the heavy stages (resolve, features build, training sets, batch scoring): "
                              "duckdb (this process) or spark (the `spark` extra and Java)")
    spark_master: str = Field("local[*]", description="Spark master URL, for engine=spark")
    spark_driver_memory: str = Field("8g", description="heap of Spark's driver, for engine=spark (in local mode all of "
                                     "Spark's memory; it receives the pairs `c360 resolve` scores)")
    redis_url: str = Field("localhost:6379", description="Redis connection string, for online_store=redis")
    duckdb_memory: str = Field("2GB", description="memory limit of the DuckDB warehouse connection")
    max_body_bytes: int = Field(1_000_000, ge=1, description="largest request body the service reads (413 beyond)")
    csv_max_line: int = Field(2_000_000, ge=1, description="bytes of the longest CSV line (record) ingest reads; "
                                                           "a file with a longer one is refused")
    lock_timeout: float = Field(30, ge=0, description="seconds a second writer of the warehouse (ingest, resolve) "
                                                      "waits for the first to finish before giving up")
    quarantine_retention_days: int = Field(90, ge=1, description="days quarantined rows (with their raw text) are "
                                                                 "kept; `c360 privacy purge-expired` drops older ones")
    audit_retention_days: int = Field(730, ge=1, description="days audit records are kept; `c360 privacy "
                                                             "purge-expired` drops older ones")
    landing: Path = Field(default_factory=lambda data: Path(data["home"]) / "landing",
                          description="folder where new exports arrive: `c360 refresh` ingests from it")
    retrain_days: int = Field(30, ge=0, description="`c360 refresh` trains challengers when the last training is "
                                                    "older than this many days")
    auth: Literal["on", "off"] = Field("on", description="API keys on the service; off: every request is a local "
                                                          "admin, and the service answers on loopback only")
    public_docs: bool = Field(True, description="the OpenAPI document and Swagger UI need no key")
    public_metrics: bool = Field(False, description="/metrics needs no key (else an admin or service key)")
    encryption_key: SecretStr | None = Field(
        None, description="key of the encrypted warehouse (DuckDB encryption); unset: personal data is stored in "
                          "plain text. Keep it out of the YAML file; losing it loses the warehouse")
    fairness_max_gap: float = Field(0.15, ge=0, description="largest worst-group gap of a model's fairness metric "
                                                             "(training/specs.py) the promotion gate accepts")
    fairness_margin: float = Field(0.03, ge=0, description="how much wider than the champion's a challenger's "
                                                           "worst-group gap may be")
    brief_endpoint: str | None = Field(None, description="OpenAI-compatible API (its base URL, e.g. "
                                                         "https://host/v1) that rewrites the call brief; unset: no "
                                                         "rewrite and no network call")
    brief_model: str = Field("gpt-4o-mini", description="model the brief endpoint is asked for")
    brief_api_key: SecretStr | None = Field(None, description="bearer key of the brief endpoint")
    brief_send_personal: bool = Field(False, description="admin setting: the brief endpoint may receive names and "
                                                         "companies (else it gets the masked brief only)")
    global_holdout: float = Field(0.05, ge=0, lt=1, description="share of all customers no campaign ever contacts "
                                                               "(stable per customer)")
    contact_cap: int = Field(2, ge=1, description="most campaign contacts a customer gets per contact period")
    contact_period_days: int = Field(30, ge=1, description="days of the contact period of the frequency cap")
    public_data: Path = Field(default_factory=lambda data: _public_data(data["home"]), validate_default=True,
                              description="folder of the public data sets (CDNOW, Hillstrom, FEBRL)")

    @field_validator("public_data")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        """Resolved when the settings are read: a later change of folder does not move it."""
        return path.resolve()

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, *_: Any, **__: Any):
        return init_settings, env_settings, YamlSource(settings_cls, env_settings)

    @property
    def warehouse(self) -> Path:
        return self.home / "warehouse.duckdb"

    @property
    def generated(self) -> Path:
        return self.home / "data" / "generated"

    @property
    def identity_model(self) -> Path:
        return self.home / "identity" / "splink_model.json"

    @property
    def feast(self) -> Path:
        return self.home / "feast"

    @property
    def snapshots(self) -> Path:
        """Feature snapshots, one Parquet file per as-of date (the Feast offline source)."""
        return self.home / "features" / "customer_features"

    @property
    def scores(self) -> Path:
        """Batch scores of `c360 score`, one folder per features as-of date and scoring run."""
        return self.home / "scores"

    @property
    def truth(self) -> Path:
        """Ground truth of the generated demo data."""
        return self.generated / "ground_truth"

    @property
    def keys(self) -> Path:
        """The service's API keys (their SHA-256 only), `c360 keys`."""
        return self.home / "security" / "keys.json"

    @property
    def runs(self) -> Path:
        return self.home / "runs.jsonl"


def _clone() -> Path | None:
    """The repository c360 runs from (an editable install of a clone), or None when it is installed as a wheel."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "c360").is_dir() else None


def _public_data(home: Path) -> Path:
    """From a clone, `shared/data` beside the repository (where the data sets' README puts them); else under home."""
    clone = _clone()
    return clone.parent / "shared" / "data" if clone is not None else Path(home) / "public_data"


class YamlSource(PydanticBaseSettingsSource):
    """Reads the YAML file named by C360_CONFIG; environment variables win over it."""

    def __init__(self, settings_cls: type[BaseSettings], env: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self.path = env().get("config")

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if not self.path:
            return {}
        path = Path(self.path)
        if not path.is_file():
            raise FileNotFoundError(f"C360_CONFIG points to {path}, which does not exist")
        return yaml.safe_load(path.read_text()) or {}
