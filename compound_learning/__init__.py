"""compound_learning: daily ad-creative performance turned into compounding, auditable knowledge.

The package is layered so the architecture shows in the folders:

- ``core``: the statistics and learning logic (pure pandas / numpy / scipy / statsmodels /
  scikit-learn; imports neither Dagster nor the database);
- ``storage``: the one place that talks to the database and to the artifact directory;
- ``orchestration``: the Dagster assets, jobs, schedules and sensors (thin wrappers);
- ``cli``: the ``compound-learning`` command.
"""

__version__ = "0.1.0"
