"""kvtier as a vLLM KV connector: the `kv_transfer_config` to pass to `vllm serve` or `LLM(...)`.

    python examples/06_vllm_connector.py

Prints the config and the `vllm serve` line built from it. Where vLLM is installed, it also
checks the config with vLLM's own `KVTransferConfig` and resolves the connector class through
vLLM's `KVConnectorFactory`, as the engine does at start. Every key of kv_connector_extra_config:
docs/integrations/vllm.md. A real engine run (CPU build of vLLM) is in tests/test_vllm.py.
"""
import json
import shlex
import sys

KV_TRANSFER_CONFIG = {
    "kv_connector": "KvtierConnector",                    # the connector class
    "kv_connector_module_path": "kvtier.integrations.vllm",  # where vLLM imports it from
    "kv_role": "kv_both",                                 # this engine both saves and loads KV
    "kv_connector_extra_config": {                        # kvtier's settings (unknown key: error)
        "storage_dir": "/nvme/kvtier",                    # the disk tier, one subdirectory per rank
        "disk_capacity": "1TiB",
    },
}

serve = "vllm serve Qwen/Qwen3-8B --kv-transfer-config " + shlex.quote(json.dumps(KV_TRANSFER_CONFIG))
print(serve)
print(f"or in Python: LLM(model='Qwen/Qwen3-8B', kv_transfer_config={KV_TRANSFER_CONFIG!r})")
if json.loads(shlex.split(serve)[-1]) != KV_TRANSFER_CONFIG:  # the shell line carries the same dict
    sys.exit("FAILED: the vllm serve line does not carry the config")

try:
    from vllm.config import KVTransferConfig
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
except ImportError as exc:
    print(f"vLLM is not importable here ({exc}); the config was printed, not checked. "
          "An engine run with it: tests/test_vllm.py (scripts/vllm-env.sh builds its venv)")
    sys.exit(0)

config = KVTransferConfig(**KV_TRANSFER_CONFIG)          # vLLM's own validation of the dict
connector = KVConnectorFactory.get_connector_class(config)  # imports kvtier.integrations.vllm
print(f"vLLM accepts it: kv_role={config.kv_role}, is_kv_transfer_instance="
      f"{config.is_kv_transfer_instance}")
print(f"connector class {connector.__module__}.{connector.__name__}")
if connector.__name__ != "KvtierConnector":
    sys.exit("FAILED: vLLM resolved another connector class")
print("OK")
