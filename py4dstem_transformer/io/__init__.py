"""Boundaries with py4DSTEM and files: detector calibration, flat peaks, OrientationMap/PhaseMap
builders, checkpoints, stored crystal identities."""
