"""Apps for the operations integration tests (reload, scale, hung and leaking workers, control)."""
