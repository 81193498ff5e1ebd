"""Tests of mavrl_ppl.baselines."""
