"""Exact ``Q*`` of a tabular MDP, once per array library."""
