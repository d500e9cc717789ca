"""Measurements: plain functions of (module, input, device) that know nothing of sweeps or storage."""
