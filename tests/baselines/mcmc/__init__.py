"""Tests of the NumPyro NUTS baseline."""
