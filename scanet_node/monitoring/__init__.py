"""Is the model still right here: local outcomes, performance and input drift."""
