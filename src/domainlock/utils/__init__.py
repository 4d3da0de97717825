"""Small shared helpers: atomic output, devices, seeding, dataclass hyper-parameters."""
