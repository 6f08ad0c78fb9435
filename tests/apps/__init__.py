"""Small Flask apps that the integration tests run under ``flask cluster-run``."""
