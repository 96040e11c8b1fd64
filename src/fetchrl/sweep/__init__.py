"""Sweeps for ``multi-seed``, ``ablate`` and ``sweep``: trials = seeds x configurations, on a local or Ray backend.

A *trial* is one seed of one configuration: train, then evaluate, writing the usual artifacts
under the configuration's root. Backends run trials; aggregation always reads the eval JSONs back
from disk (never results held in memory), so every backend yields the same aggregate schema.

Modules, in import order (each imports only those above it):
- ``progress`` — the rich progress display (done / running / queued / failed, ETA);
- ``trials``   — :class:`Trial`, :func:`is_complete` and what a worker runs per attempt;
- ``ledger``   — attempts and the retry-once rule every backend keeps;
- ``base``     — the Runner protocol, the backend registry and :func:`run_trials`;
- ``local``    — a spawn process pool, one fresh worker per attempt (default ``--backend``);
- ``ray``      — one Ray task per trial (``pip install '.[ray]'``);
- ``aggregate``— multi-seed aggregates from the eval JSONs on disk;
- ``plan``     — ``--grid`` parsing and configurations x seeds as trials.

A failed attempt (an exception or a dead worker) is retried once; other trials still finish.
A trial whose checkpoint and eval JSON already match its configuration is skipped, so a resumed
sweep does not retrain finished seeds.
"""

# The backends register themselves in fetchrl.sweep.base.BACKENDS on import; importing them here
# fills the registry before anyone can call run_trials (the ray module does not import Ray itself).
from fetchrl.sweep import local, ray  # noqa: F401
