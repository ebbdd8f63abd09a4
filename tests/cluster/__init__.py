"""Multi-broker tests: several ``keel serve`` processes sharing one object store."""
