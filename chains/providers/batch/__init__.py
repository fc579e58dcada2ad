"""The batch tier: a run's model requests collected into a provider's batch API instead of being sent.

``backend`` is the one small interface a provider's batch API sits behind (build a request line, upload,
create, poll, fetch results, cancel) and its OpenAI implementation; ``journal`` writes what was submitted
durably beside ``--output``; ``collector`` gathers the requests of every input in flight into batches,
waits for them, and hands each request its answer (``ManagedChatModel`` calls it in place of an HTTP
request).  See docs/architecture.md.
"""
