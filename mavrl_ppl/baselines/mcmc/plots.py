"""Trace and rank plots of a NUTS posterior (placeholder, written below)."""
