"""The HTTP API of the original service design (FastAPI), on top of the Dagster project."""
