"""Luigi workflows: ``luigi --module workflows BackfillFactors`` or ``NightlyFactors``."""
from workflows.tasks import (BackfillFactors, ChooseModel, DemoCatalogue, EvaluateColdStart,
                             Inputs, MelSpectrograms, NightlyFactors, Preflight, PublishFactors,
                             ScoreColdTracks, TrainAls, TrainModel, UserInputs, configure_luigi)

configure_luigi()

__all__ = ["BackfillFactors", "ChooseModel", "DemoCatalogue", "EvaluateColdStart", "Inputs", "MelSpectrograms",
           "NightlyFactors", "Preflight", "PublishFactors", "ScoreColdTracks", "TrainAls",
           "TrainModel", "UserInputs"]
