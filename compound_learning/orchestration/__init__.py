"""Dagster: the lineage graph (assets), the job, its schedule and sensors. Thin wrappers over
``compound_learning.steps``; no statistics and no SQL live here."""
