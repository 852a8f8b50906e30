"""c360's pyfunc models on disk without a reference to c360's own classes, so they load wherever c360 is installed.

A pickle names the module and class of every object in it: models pickled as `training.churn.ChurnModel` broke
when the module became `c360.training.churn`. Here each of c360's model classes is written under a stable name
(`_classes`: a key is never renamed) with its attributes; what those attributes hold beyond plain containers
(LightGBM boosters and estimators, scikit-learn calibrators, numbers, frames) is pickled as usual, by reference
to those libraries, whose versions the model's pip requirements pin. `load` rebuilds the objects through the same
table, wherever the classes live by then.

`SavedModel` is the MLflow pyfunc around such an object; MLflow builds it from `pyfunc_model.py` (models from
code), so no Python object of c360 is pickled by MLflow either.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.pyfunc import PythonModel

FILE = "model.pkl"
_TAG = "__c360__"


def _classes() -> dict[str, type]:
    # Imported here: these modules log their models through `tracking`, which imports this module.
    from c360.training.churn import ChurnModel
    from c360.training.clv_pipeline import ClvModel
    from c360.training.nba_pipeline import NbaModel
    from c360.training.table_candidates import BlendChurn, LinearChurn
    from c360.training.table_models import TableChurnModel, TableNbaModel
    from c360.training.uplift import FeatureSpec, MultiArmUplift, _Constant

    return {
        "churn": ChurnModel,
        "clv": ClvModel,
        "nba": NbaModel,
        "table-churn": TableChurnModel,
        "table-blend": BlendChurn,
        "table-linear": LinearChurn,
        "table-nba": TableNbaModel,
        "uplift": MultiArmUplift,
        "uplift-constant": _Constant,
        "feature-spec": FeatureSpec,
    }


def _ours(obj: Any) -> bool:
    owner = obj if isinstance(obj, type) else type(obj)
    return str(getattr(owner, "__module__", "")).partition(".")[0] == "c360"


class _Pickler(pickle.Pickler):
    """Refuses what would be pickled by reference to c360: an object `_plain` could not name."""

    def reducer_override(self, obj: Any) -> Any:
        if _ours(obj):
            raise TypeError(f"{type(obj).__qualname__} has no stable name: add it to c360.training.saved._classes")
        return NotImplemented


def _plain(value: Any, names: dict[type, str]) -> Any:
    """`value` with every c360 object replaced by {_TAG: its stable name, "state": its attributes}."""
    if type(value) in names:
        return {_TAG: names[type(value)], "state": _plain(vars(value), names)}
    if type(value) is dict:
        return {key: _plain(item, names) for key, item in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_plain(item, names) for item in value)
    return value


def _objects(value: Any, classes: dict[str, type]) -> Any:
    """The inverse of `_plain`."""
    if type(value) is dict:
        items = {key: _objects(item, classes) for key, item in value.items()}
        if _TAG not in items:
            return items
        obj: Any = object.__new__(classes[items[_TAG]])
        obj.__dict__.update(items["state"])
        return obj
    if type(value) in (list, tuple):
        return type(value)(_objects(item, classes) for item in value)
    return value


def save(model: Any, folder: Path) -> Path:
    """Writes `model` to `folder/model.pkl`; `TypeError` when it holds a c360 object without a stable name."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {cls: name for name, cls in _classes().items()}
    with (folder / FILE).open("wb") as out:
        _Pickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(_plain(model, names))
    return folder


def load(folder: Path) -> Any:
    with (folder / FILE).open("rb") as file:
        return _objects(pickle.load(file), _classes())


class SavedModel(PythonModel):
    """The pyfunc of a saved c360 model: `obj` is the model, its `predict(DataFrame)` the pyfunc's."""

    def load_context(self, context: Any) -> None:
        self.obj = load(Path(context.artifacts["model"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> Any:
        return self.obj.predict(model_input)
