"""Every architecture controller by name: adding a controller is its module plus one line here."""
from __future__ import annotations

from controllers.base import Controller
from controllers.estimator_pruning import EstimatorPruningController
from controllers.gdas import GdasController
from controllers.gradient import GradientController
from controllers.random_estimator import RandomEstimatorController
from controllers.reinforce import ReinforceController
from controllers.rsps import RspsController
from nas.core.registry import lookup

CONTROLLERS: dict[str, type[Controller]] = {
    GradientController.name: GradientController,
    ReinforceController.name: ReinforceController,
    GdasController.name: GdasController,
    RspsController.name: RspsController,
    EstimatorPruningController.name: EstimatorPruningController,
    RandomEstimatorController.name: RandomEstimatorController,
}


def controller_class(name: str) -> type[Controller]:
    """The controller registered as `name`; UserError listing the known controllers otherwise."""
    return lookup(CONTROLLERS, "controller", name)
