"""The one place that talks to the database (``store``) and to the model artifact directory."""
