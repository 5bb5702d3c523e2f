"""Lookalike core library: discover -> decode -> embed -> label -> write -> search.

Never imports Airflow; TensorFlow is imported lazily, only where a model runs.
"""
