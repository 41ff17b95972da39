"""Patterns from crystals: the Bloch-wave/kinematic simulator, training sets, multi-phase sets, test scans."""
