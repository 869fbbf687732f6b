"""The trainer loop, checkpoints, schedules and the run folder."""

from decaylab.training.run_files import RunPaths, load_run_config
from decaylab.training.trainer import Trainer, TrainingDiverged, TrainResult, resume_run

__all__ = ["RunPaths", "TrainResult", "Trainer", "TrainingDiverged", "load_run_config", "resume_run"]
