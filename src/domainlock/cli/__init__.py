"""The ``domainlock`` command line: one verb per module (data, train, eval, protect, ...)."""
