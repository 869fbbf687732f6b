"""The one training loop (loop.py) and its engines: one model (trainer.py) or K stacked replicas (stacked.py)."""

from decaylab.training.trainer import Trainer, TrainingDiverged, TrainResult, resume_run

__all__ = ["TrainResult", "Trainer", "TrainingDiverged", "resume_run"]
