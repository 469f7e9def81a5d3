"""Analyses over cached activations: quantities derived from a run, not hook points themselves."""

from .memory import effective_horizon, mean_memory_horizon, memory_horizon

__all__ = ["effective_horizon", "mean_memory_horizon", "memory_horizon"]
