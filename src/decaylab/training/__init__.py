"""The trainer loop (one model, or K stacked replicas), its schedule and its progress bar."""

from decaylab.training.trainer import Trainer, TrainingDiverged, TrainResult, resume_run

__all__ = ["TrainResult", "Trainer", "TrainingDiverged", "resume_run"]
