"""Serving-engine integrations of kvtier.

Each integration lives in its own module and imports its engine only when it is imported
itself, so ``import kvtier`` never pulls in an engine:

- ``kvtier.integrations.sglang``: ``KvtierHiCacheStorage``, an SGLang HiCache L3 storage
  backend (``--hicache-storage-backend dynamic``); see docs/integrations/sglang.md.
"""
