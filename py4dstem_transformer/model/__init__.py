"""Tokens and the transformer: Bragg disks -> tokens -> orientation (and phase), and the symmetry-aware loss."""
