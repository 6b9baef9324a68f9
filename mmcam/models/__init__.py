"""Runtime code and weights of the models that ship with mmcam (training scripts and model
cards live in the repository's top-level ``models/`` folder)."""
