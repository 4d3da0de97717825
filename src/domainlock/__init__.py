"""domainlock: make trained image classifiers non-transferable.

The protected model stays accurate on the owner's authorized (source) domain and becomes useless on
unauthorized (target) domains, directly and after an attacker fine-tunes it.
"""

__version__ = "0.1.0"
