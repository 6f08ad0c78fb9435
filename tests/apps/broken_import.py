"""An app whose import fails, as a typo or a missing setting would make it."""

raise RuntimeError("broken-import-marker: DATABASE_URL is not set")
