"""Comparing against ground truth and ACOM, and the demo."""
