"""Feast definitions of c360: the customer entity, its feature source, feature views and feature services.

Definitions only. Paths come from settings at call time (`definitions(source_path, scores_path, engine)`), absolute,
because Feast resolves relative FileSource paths against the working directory; the engine chooses the sources'
class, which Feast's offline store of that engine reads.
"""

from pathlib import Path

from c360.feature_repo.entities import customer
from c360.feature_repo.predictions import predictions_view
from c360.feature_repo.services import services
from c360.feature_repo.sources import customer_features
from c360.feature_repo.views import views


def definitions(source_path: str, scores_path: str | None = None, engine: str = "duckdb") -> list:
    """Everything to `FeatureStore.apply`: entity, views over the snapshots at `source_path`, services, and the
    `predictions` view over the batch scores at `scores_path` (default: `scores` beside the `features` folder),
    their sources read by the offline store of `engine` ("duckdb" or "spark")."""
    source = customer_features(source_path, engine)
    feature_views = views(source)
    scores = scores_path or str(Path(source_path).parent.parent / "scores")
    return [customer, *feature_views.values(), *services(feature_views), predictions_view(scores, engine)]


__all__ = ["customer", "definitions"]
