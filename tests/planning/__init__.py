"""Tests of the Q* solvers (numpy, torch, JAX) and their agreement."""
