"""Luigi workflows: ``luigi --module workflows BackfillFactors`` or ``NightlyFactors``."""
from workflows import console
from workflows.luigi_config import configure_luigi
from workflows.tasks import (BackfillFactors, ChooseModel, DemoCatalogue, EvaluateColdStart,
                             Inputs, MelSpectrograms, NightlyFactors, Preflight, PublishFactors,
                             ScoreColdTracks, TrainAls, TrainModel, UserInputs)

configure_luigi()
console.install()

__all__ = ["BackfillFactors", "ChooseModel", "DemoCatalogue", "EvaluateColdStart", "Inputs", "MelSpectrograms",
           "NightlyFactors", "Preflight", "PublishFactors", "ScoreColdTracks", "TrainAls",
           "TrainModel", "UserInputs"]
