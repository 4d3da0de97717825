"""One small module per offline domain builder; :mod:`domainlock.data.registry` lists them."""
