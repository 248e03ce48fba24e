"""Luigi workflows: ``luigi --module workflows BackfillFactors`` or ``NightlyFactors``."""
from workflows.tasks import (BackfillFactors, DemoCatalogue, EvaluateColdStart, Inputs,
                             MelSpectrograms, NightlyFactors, ScoreColdTracks, TrainAls,
                             TrainModel, UserInputs)

__all__ = ["BackfillFactors", "DemoCatalogue", "EvaluateColdStart", "Inputs", "MelSpectrograms",
           "NightlyFactors", "ScoreColdTracks", "TrainAls", "TrainModel", "UserInputs"]
