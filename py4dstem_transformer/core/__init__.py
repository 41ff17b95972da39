"""Conventions and physics every stage shares: rotations, point-group symmetry, zone axes, kinematic
reflections, devices."""
