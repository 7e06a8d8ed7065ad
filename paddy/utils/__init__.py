"""Helpers shared by the entry points: run artifacts, plots, trainer set-up."""
