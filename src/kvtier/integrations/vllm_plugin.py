"""The ``vllm.general_plugins`` entry point of kvtier (pyproject.toml): vLLM runs it in every
process it starts, so ``"kv_connector": "KvtierConnector"`` works without
``kv_connector_module_path``. Light on purpose: the connector module loads only when vLLM
builds the connector."""

from __future__ import annotations


def register() -> None:
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory

    if "KvtierConnector" not in KVConnectorFactory._registry:
        KVConnectorFactory.register_connector("KvtierConnector", "kvtier.integrations.vllm", "KvtierConnector")
