"""Serving-engine integrations of kvtier.

Each integration lives in its own module and imports its engine only when it is imported
itself, so ``import kvtier`` never pulls in an engine:

- ``kvtier.integrations.sglang``: ``KvtierHiCacheStorage``, an SGLang HiCache L3 storage
  backend (``--hicache-storage-backend dynamic``); see docs/integrations/sglang.md.
- ``kvtier.integrations.vllm``: ``KvtierConnector``, a vLLM KV connector (``--kv-transfer-config``,
  also registered as a ``vllm.general_plugins`` entry point); see docs/integrations/vllm.md.
- ``kvtier.integrations.common``: the engine-free config helpers both share.
"""
