"""The run folder (DESIGN.md §5): its layout and meta.json, checkpoints, and loading a trained run back."""
