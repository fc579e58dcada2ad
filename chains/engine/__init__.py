"""Running many inputs: ``run_batch``/``stream_one`` (a pool of workers), the run's shared ``Limits``
(concurrency, rate, budget, prices), the one retry policy and its deadlines, metrics and callbacks,
``--resume`` keys and stopping a run part-way.

Nothing here depends on a provider.  A scale-out engine (Ray: inputs spread over processes or machines,
each worker with its own ``ModelSession``) goes here, next to ``execution.py``, and reuses its ``Record``,
``RunSummary`` and ``Limits``.
"""
