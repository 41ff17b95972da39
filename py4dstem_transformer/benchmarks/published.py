"""The published transformer's benchmark (Je et al., Fig. 3), for reference beside ours.

Median wall time in seconds of 10 runs each, end to end, N x N scan (``../shared/docs/method.md`` §8):
their model on ~15 CPU cores or one GPU; py4DSTEM **0.14.8** ACOM on one core. Another machine,
another ACOM kernel and their own synthetic Bragg-vector files: quote ratios within one source only.
"""

#: scan side N -> seconds, end to end
PAPER_FIG3 = {
    "transformer, CPU (~15 cores)": {8: 2.52, 16: 2.80, 32: 3.83, 64: 7.81, 128: 24.04, 256: 88.91, 512: 355.60,
                                     1024: 1453.62},
    "transformer, GPU": {8: 2.72, 16: 2.72, 32: 2.90, 64: 3.47, 128: 5.79, 256: 15.03, 512: 51.91, 1024: 199.49},
    "py4DSTEM ACOM 0.14.8 (1 core)": {8: 3.47, 16: 7.00, 32: 21.12, 64: 77.36, 128: 303.12, 256: 1337.64,
                                      512: 5320.82, 1024: 21396.78},
}

#: their per-stage medians at 1024^2 on the GPU, seconds
PAPER_STAGES_GPU_1024 = {"setup (crystal + orientation_plan)": 0.14, "load (py4DSTEM.read)": 71.36,
                         "preprocess": 42.87, "prediction": 55.22, "make OrientationMap": 27.35}
