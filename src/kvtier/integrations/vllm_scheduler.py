"""The scheduler half of kvtier's vLLM connector: which pages each step looks up, loads and
saves. It holds no store (the workers do); it talks to them through vLLM's per-step connector
metadata. Split out of ``vllm.py``."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .vllm_meta import KvtierMetadata, PageBatch, Side

if TYPE_CHECKING:
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.request import Request

logger = logging.getLogger(__name__)


@dataclass
class _Request:
    request: Any
    salt: str | None
    chains: list[bytes]                 # the prompt's pages offered for lookup
    asked_at: float | None = None       # when the lookup went out (None: not yet)
    hit_pages: int | None = None        # answer: stored leading pages
    load_pages: int = 0                 # answer: pages worth loading
    local_tokens: int = 0               # vLLM's own prefix-cache hit at the last query
    load: tuple[int, int] | None = None  # token range to load when next scheduled
    block_ids: list[int] = field(default_factory=list)
    saved_pages: int = 0


class SchedulerSide(Side):
    def __init__(self, connector: Any) -> None:
        self.c = connector
        self.requests: dict[str, _Request] = {}
        self.pending: list[str] = []

    def matched(self, request: "Request", num_computed: int) -> int | None:
        state = self.requests.get(request.request_id)
        if state is None:
            state = self._track(request)
        if not state.chains or len(state.chains) * self.c.page_tokens <= num_computed:
            return 0
        state.local_tokens = num_computed
        if state.hit_pages is None:
            if state.asked_at is None:
                state.asked_at = time.monotonic()
                self.pending.append(request.request_id)
                return None
            if time.monotonic() - state.asked_at < self.c.config.lookup_timeout_s:
                return None
            logger.warning("kvtier: no lookup answer from the workers within %.1f s; request %s "
                           "runs without kvtier", self.c.config.lookup_timeout_s, request.request_id)
            state.hit_pages = state.load_pages = 0
        return max(0, state.load_pages * self.c.page_tokens - num_computed)

    def _track(self, request: "Request") -> _Request:
        tokens = list(request.prompt_token_ids or [])
        salt = _salt(request)
        usable = (len(tokens) - 1) // self.c.page_tokens  # vLLM computes at least one token
        chains = []
        if usable and getattr(request, "prompt_embeds", None) is None:
            keys = self.c.chain_namespace(salt).prefix_keys(tokens[:usable * self.c.page_tokens],
                                                           self.c.page_tokens)
            chains = [k.chain_digest for k in keys]
        state = _Request(request, salt, chains)
        self.requests[request.request_id] = state
        return state

    def after_alloc(self, request: "Request", num_external_tokens: int) -> None:
        state = self.requests.get(request.request_id)
        if state is None:
            state = self._track(request)
        if num_external_tokens > 0:
            end = state.local_tokens + num_external_tokens
            state.load = (state.local_tokens, end)
        state.saved_pages = max(state.saved_pages, state.hit_pages or 0)

    def answers(self, answers: dict[str, tuple[int, int]]) -> None:
        for req_id, (hit, load) in answers.items():
            state = self.requests.get(req_id)
            if state is not None:
                state.hit_pages, state.load_pages = hit, min(load, hit)

    def finished(self, req_id: str) -> None:
        self.requests.pop(req_id, None)

    def build_meta(self, out: "SchedulerOutput") -> KvtierMetadata:
        meta = KvtierMetadata(step_tokens=out.total_num_scheduled_tokens)
        for req_id in self.pending:
            state = self.requests.get(req_id)
            if state is not None and state.hit_pages is None:
                meta.lookups.append(PageBatch(req_id, state.salt, state.chains))
        self.pending = []
        pt, bs = self.c.page_tokens, self.c.block_size
        for new in out.scheduled_new_reqs:
            state = self.requests.get(new.req_id)
            if state is None:
                continue
            state.block_ids = list(new.block_ids[0])
            if state.load is not None:
                start, end = state.load
                first, last = start // pt, end // pt
                meta.loads.append(PageBatch(new.req_id, state.salt, state.chains[first:last], [
                    [b_id if start <= (p * pt + j * bs) < end else -1
                     for j, b_id in enumerate(state.block_ids[p * pt // bs:(p + 1) * pt // bs])]
                    for p in range(first, last)]))
                state.load = None
            self._add_saves(meta, state, new.num_computed_tokens + out.num_scheduled_tokens[new.req_id])
        cached = out.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            state = self.requests.get(req_id)
            if state is None:
                continue
            new_ids = cached.new_block_ids[i]
            if req_id in cached.resumed_req_ids:
                state.block_ids = list(new_ids[0]) if new_ids is not None else []
            elif new_ids is not None:
                state.block_ids.extend(new_ids[0])
            self._add_saves(meta, state, cached.num_computed_tokens[i] + out.num_scheduled_tokens[req_id])
        return meta

    def _add_saves(self, meta: KvtierMetadata, state: _Request, computed: int) -> None:
        """Every page that is full once this step has run and is not known to be stored."""
        pt, bpp = self.c.page_tokens, self.c.page_tokens // self.c.block_size
        tokens = state.request.all_token_ids
        full = min(computed, len(tokens), len(state.block_ids) * self.c.block_size) // pt
        if full <= state.saved_pages or getattr(state.request, "prompt_embeds", None) is not None:
            return
        keys = self.c.chain_namespace(state.salt).prefix_keys(list(tokens[:full * pt]), pt)
        meta.saves.append(PageBatch(state.request.request_id, state.salt,
                                    [k.chain_digest for k in keys[state.saved_pages:full]],
                                    [state.block_ids[p * bpp:(p + 1) * bpp] for p in range(state.saved_pages, full)]))
        state.saved_pages = full

    def shutdown(self) -> None:
        self.requests.clear()


def _salt(request: "Request") -> str | None:
    """The tenant salt of a request: its ``cache_salt``, LoRA adapter and multimodal inputs."""
    parts = [getattr(request, "cache_salt", None)]
    lora = getattr(request, "lora_request", None)
    parts.append(None if lora is None else f"lora:{lora.lora_name}:{lora.lora_int_id}")
    parts += [f"mm:{f.identifier}" for f in (getattr(request, "mm_features", None) or [])]
    return None if not any(parts) else json.dumps(parts)
