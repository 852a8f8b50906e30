"""MLflow's entry point to a c360 pyfunc model (models from code): MLflow copies this file into every such model
and runs it at load time; the model itself is its artifact `model`, written by `c360.training.saved.save`."""

import mlflow.models

from c360.training.saved import SavedModel

mlflow.models.set_model(SavedModel())
