"""Pure learning logic: no Dagster, no database. Everything here takes and returns pandas/numpy."""
