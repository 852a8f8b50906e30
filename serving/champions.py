"""The champion models, loaded by alias from the MLflow registry, and reloaded when `@champion` moves.

`Champions.load(home)` loads the models of `training.specs.MODELS` (`c360-churn`, `c360-clv`, `c360-nba`,
`c360-expansion`) at `@champion`. A model that is not `required` (expansion, newer than many homes) may lack a
champion: the others still serve, and asking for it raises `RegistryUnavailable` naming it (the profile shows it
as unavailable). `refresh()` asks the registry which versions carry the alias now and reloads only the models whose
version changed (a few milliseconds when nothing did), so a promotion is picked up without a restart. Each
`Champion` scores through its kind's `serving.predict.Scorer` (`champion.inputs`, `champion.score(frame)`); the
CLV range needs the model's forward test RMSE (logged with the run) and the latest feature snapshot
(`serving.predict.ClvScorer`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from c360.serving.errors import Unavailable
from c360.serving.predict import SCORERS, K, ModelScores, Scorer
from c360.training import tracking
from c360.training.specs import MODELS
from c360.training.tracking import CHAMPION, ModelNotFound


class RegistryUnavailable(Unavailable):
    """The MLflow registry cannot be read, or a champion is missing."""

    def __init__(self, advice: str, cause: BaseException | None = None) -> None:
        super().__init__("model registry", advice, cause)


@dataclass(frozen=True)
class Champion:
    kind: str  # a key of training.specs.MODELS
    name: str  # registered model name
    version: int
    model: Any
    run_id: str | None
    metrics: dict[str, float]
    scorer: Scorer

    @property
    def inputs(self) -> list[str]:
        """The raw feature columns the model reads."""
        return self.scorer.inputs

    def score(self, frame: pd.DataFrame, k: int = K) -> ModelScores:
        """The model's scores with top-k reasons of `frame` (raw features, one row per customer; a column it lacks
        is an unknown value)."""
        return self.scorer.score(frame.reindex(columns=self.scorer.reads), k)


def _load(home: Path, kind: str, reference: pd.DataFrame | None) -> Champion:
    name = MODELS[kind].name
    model, version = tracking.load_model(name, CHAMPION, "pyfunc", home=home)
    metrics: dict[str, float] = {}
    if version.run_id:
        metrics = dict(tracking.configure(home).get_run(version.run_id).data.metrics)
    scorer = SCORERS[kind].of(model, int(version.version), metrics, reference)
    return Champion(kind, name, int(version.version), model, version.run_id, metrics, scorer)


class Champions:
    """The loaded champions of one C360_HOME; thread-safe refresh."""

    def __init__(self, home: Path, snapshot: pd.DataFrame | None = None) -> None:
        self.home = Path(home)
        self._lock = threading.Lock()
        self.models: dict[str, Champion] = {}
        self._reference = snapshot
        self.error: str | None = None

    @classmethod
    def load(cls, home: Path, snapshot: pd.DataFrame | None = None) -> Champions:
        champions = cls(home, snapshot)
        champions.refresh()
        return champions

    def __getitem__(self, kind: str) -> Champion:
        try:
            return self.models[kind]
        except KeyError:
            raise RegistryUnavailable(self.error or f"no champion for {MODELS[kind].name}: train and promote it "
                                      f"(`c360 train {kind}`, `c360 promote {kind}`)") from None

    @property
    def ready(self) -> bool:
        return {kind for kind, spec in MODELS.items() if spec.required} <= set(self.models)

    def kinds(self) -> list[str]:
        """The kinds with a loaded champion, in `MODELS` order."""
        return [kind for kind in MODELS if kind in self.models]

    def loaded(self) -> tuple[Champion, ...]:
        """The loaded champions, in `MODELS` order."""
        return tuple(self.models[kind] for kind in self.kinds())

    def versions(self) -> dict[str, int]:
        return {kind: c.version for kind, c in self.models.items()}

    def champion_versions(self) -> dict[str, int]:
        """The versions carrying @champion in the registry now (RegistryUnavailable when it cannot say, or when a
        required model has none); an optional model without one is left out."""
        try:
            client = tracking.configure(self.home)
            found = {}
            for kind, spec in MODELS.items():
                try:
                    found[kind] = int(tracking.version_by_alias(client, spec.name, CHAMPION).version)
                except ModelNotFound:
                    if spec.required:
                        raise
            return found
        except ModelNotFound as e:
            raise RegistryUnavailable(f"{e}: train and promote it (`c360 train all`, `c360 promote`)") from e
        except Exception as e:  # a broken or locked registry database is the caller's 503
            raise RegistryUnavailable("cannot be read: see the server log", e) from e

    def refresh(self) -> dict[str, tuple[int | None, int]]:
        """Reload every model whose @champion moved; returns {kind: (old version, new version)} of the reloaded."""
        with self._lock:
            try:
                wanted = self.champion_versions()
                changed = {kind: (self.models[kind].version if kind in self.models else None, version)
                           for kind, version in wanted.items()
                           if kind not in self.models or self.models[kind].version != version}
                for kind in changed:
                    self.models[kind] = _load(self.home, kind, self._reference)
                for kind in set(self.models) - set(wanted):  # an optional model's @champion was taken away
                    del self.models[kind]
            except RegistryUnavailable as e:
                self.error = e.advice
                raise
            except Exception as e:  # artifacts missing or unreadable: not ready, say why
                error = RegistryUnavailable("a champion's artifacts cannot be loaded: see the server log", e)
                self.error = error.advice
                raise error from e
            self.error = None
            return changed
