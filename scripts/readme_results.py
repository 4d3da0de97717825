#!/usr/bin/env python
"""Regenerate README.md's results blocks from the result databases committed under docs/ (``make readme``)."""

from domainlock.bench.readme import update_readme

#: suite -> the docs folder whose results.db (``domainlock bench export DIR --format db``) the block shows
RESULTS = {"digits-offline": "docs/offline/digits", "digits-attacks": "docs/attacks/digits"}

for suite, folder in RESULTS.items():
    update_readme(folder, "README.md", "make readme", suite)
    print(f"README.md: {suite} block from {folder}/results.db")
