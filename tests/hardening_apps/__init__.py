"""Apps for the HTTP hardening integration tests (limits, TLS, proxies, large bodies)."""
