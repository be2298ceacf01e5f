"""The HTTP transport (FastAPI): the app, its routes, models and schema."""
