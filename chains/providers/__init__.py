"""Talking to a model: ``ModelSession`` (the model factory), ``ManagedChatModel`` (limits, retries, deadlines
and usage around every request), HTTP pools per event loop, the sync portal, the offline fake model, the
sqlite cache, token estimates and LangSmith tracing.

Where what comes next goes: a batch backend (a provider's batch API: many requests in one job, billed
at its own prices) is a module here that ``ModelSession`` picks by setting; a router (fallbacks, several
endpoints) is a ``BaseChatModel`` here that ``ManagedChatModel`` wraps like any inner model, using
``chains.engine.retry.classify`` to decide when to move on.
"""
