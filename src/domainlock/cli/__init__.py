"""The ``domainlock`` command line: one module per verb group, each verb a thin layer over the library
(parse the flags, call the library, hand back an :class:`~domainlock.cli.common.Output`).

========================  =========================================================
module                    verbs
========================  =========================================================
:mod:`.data`              ``data list``, ``data build``, ``data show``
:mod:`.train`             ``train``
:mod:`.importing`         ``import`` (your own network from a builder file and its weights)
:mod:`.evaluate`          ``eval``
:mod:`.protect`           ``protect``
:mod:`.ownership`         ``verify``
:mod:`.synthesize`        ``synthesize``
:mod:`.attack`            ``attack finetune``, ``slc``
:mod:`.common`            shared flags and helpers
:mod:`.main`              the entry point :func:`~domainlock.cli.main.main` and the parser
========================  =========================================================

One convention for every verb:

- **stdout** carries the result only: a human-readable report, or with ``--json`` exactly one JSON document
  and nothing else (``domainlock eval ... --json | jq .results``). What the library prints while it works
  (progress) goes to stderr, and so do notes (``domainlock: note: ...``) and progress bars (``-q`` hides them).
- **files** are written only where ``--out`` says (an artifact directory, a PNG, or for ``slc`` a directory
  that receives ``slc.json`` and ``slc.png``), atomically, and never over existing ones without
  ``--overwrite``; that is checked before any long computation.
- **errors**: a :class:`~domainlock.errors.DomainlockError` is one line ``domainlock: error: ...`` on stderr
  and exit code 2; Ctrl-C exits 130 with nothing half-written.
- **warnings** from the libraries underneath (torch's ``UserWarning``, ...) are held back while a verb runs:
  after a failure the one-line error is all of stderr; after a success each distinct warning is printed once,
  as one line ``domainlock: warning: ...`` on stderr.
"""
