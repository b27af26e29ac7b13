"""A radix tree over token ids, and the reference router middleware built on it.

:class:`PrefixCacheMiddleware` does two things:

- **Answers repeated identical greedy requests from cache.** A request is cacheable when it is a
  single token-level request (``input_ids``, not ``text`` or a batch), its
  ``sampling_params.temperature`` is explicitly 0, and it does not stream. The key is the prompt
  plus every other request field (``rid`` excluded). Replies that ended in ``abort`` are not
  stored. A hit returns a copy of the stored reply with ``meta_info.router_cache_hit = true``.
- **Records prefix hits.** Every token-level prompt is inserted into a radix tree; the length of
  the prefix it shares with earlier prompts is added to ``stats.prefix_hit_tokens`` and set as
  ``meta_info.router_prefix_hit_tokens`` on the reply.

What it does not do: it does not reuse KV cache (the engine owns that; SGLang reports it as
``meta_info.cached_tokens``), it never caches sampled (temperature > 0) requests, and it cannot see
weights change behind the router. It drops every stored reply on :meth:`invalidate` (the router
calls it on ``update_weights`` and ``/flush_cache``) and when a reply reports a ``weight_version``
unlike the stored ones.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeGuard

import attrs

from miles_sdk.hooks import RouterRequest, RouterResponse

__all__ = ["PrefixCacheMiddleware", "PrefixCacheStats", "RadixTree"]


class _Node:
    __slots__ = ("children", "key", "last_access", "parent")

    def __init__(self, key: tuple[int, ...], parent: _Node | None, last_access: int) -> None:
        self.key = key
        """The edge label from the parent: a run of tokens shared by everything below."""
        self.parent = parent
        self.children: dict[int, _Node] = {}
        self.last_access = last_access


def _common_prefix(a: Sequence[int], b: Sequence[int], start: int) -> int:
    """Length of the common prefix of ``a`` and ``b[start:]``."""
    n = min(len(a), len(b) - start)
    i = 0
    while i < n and a[i] == b[start + i]:
        i += 1
    return i


class RadixTree:
    """Token sequences in a compressed trie; answers "how long a prefix of this was seen before".

    ``max_tokens`` bounds the tokens stored (edge labels); past it the least recently used leaves
    are dropped, so old prefixes may stop matching.
    """

    def __init__(self, max_tokens: int | None = 1_000_000) -> None:
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"RadixTree: max_tokens must be >= 1, got {max_tokens}")
        self.max_tokens = max_tokens
        self._clock = itertools.count(1)
        self._root = _Node((), None, 0)
        self._num_tokens = 0

    @property
    def num_tokens(self) -> int:
        """Tokens stored on all edges."""
        return self._num_tokens

    def match_prefix(self, tokens: Sequence[int]) -> int:
        """The longest prefix of ``tokens`` that is a prefix of some stored sequence."""
        node, i = self._root, 0
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                break
            k = _common_prefix(child.key, tokens, i)
            i += k
            if k < len(child.key):
                break
            node = child
        return i

    def insert(self, tokens: Sequence[int]) -> int:
        """Store ``tokens``; return the length of the prefix that was already stored."""
        now = next(self._clock)
        node, i = self._root, 0
        node.last_access = now
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                leaf = _Node(tuple(tokens[i:]), node, now)
                node.children[tokens[i]] = leaf
                self._num_tokens += len(leaf.key)
                break
            k = _common_prefix(child.key, tokens, i)
            if k < len(child.key):
                child = self._split(child, k)
            child.last_access = now
            node, i = child, i + k
        if self.max_tokens is not None and self._num_tokens > self.max_tokens:
            self._evict(self.max_tokens)
        return i

    def clear(self) -> None:
        """Drop everything."""
        self._root = _Node((), None, 0)
        self._num_tokens = 0

    def _split(self, child: _Node, k: int) -> _Node:
        """Cut ``child``'s edge after ``k`` tokens; return the new middle node."""
        parent = child.parent
        assert parent is not None
        mid = _Node(child.key[:k], parent, child.last_access)
        parent.children[mid.key[0]] = mid
        child.key = child.key[k:]
        child.parent = mid
        mid.children[child.key[0]] = child
        return mid

    def _evict(self, target: int) -> None:
        # Leaves go oldest first; a parent left childless becomes a leaf and may go next round.
        while self._num_tokens > target:
            leaves = sorted(self._leaves(), key=lambda n: n.last_access)
            if not leaves:
                return
            for leaf in leaves:
                if self._num_tokens <= target:
                    return
                assert leaf.parent is not None
                del leaf.parent.children[leaf.key[0]]
                self._num_tokens -= len(leaf.key)

    def _leaves(self) -> list[_Node]:
        out: list[_Node] = []
        stack = list(self._root.children.values())
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children.values())
            else:
                out.append(node)
        return out


@attrs.define
class PrefixCacheStats:
    """Counters since the middleware was made (or last :meth:`PrefixCacheMiddleware.reset_stats`)."""

    requests: int = 0
    prompt_tokens: int = 0
    """Tokens of all token-level prompts seen."""
    prefix_hit_tokens: int = 0
    """Of those, tokens in a prefix some earlier prompt shared."""
    cache_hits: int = 0
    cache_misses: int = 0
    """Cacheable requests that went to an engine."""
    uncacheable: int = 0
    """Requests that could not be cached (sampled, text, batch, streaming)."""

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class PrefixCacheMiddleware:
    """Router middleware: a reply cache for identical greedy requests, plus prefix-hit accounting.

    Args:
        max_cached_replies: replies kept (least recently used dropped first).
        max_tree_tokens: tokens kept in the prefix tree.
    """

    def __init__(self, *, max_cached_replies: int = 4096, max_tree_tokens: int | None = 1_000_000) -> None:
        if max_cached_replies < 0:
            raise ValueError(
                f"PrefixCacheMiddleware: max_cached_replies must be >= 0, got {max_cached_replies}"
            )
        self.tree = RadixTree(max_tree_tokens)
        self.stats = PrefixCacheStats()
        self._max = max_cached_replies
        self._replies: OrderedDict[tuple[tuple[int, ...], str], RouterResponse] = OrderedDict()
        self._version: object = None

    def __len__(self) -> int:
        """Replies stored."""
        return len(self._replies)

    async def __call__(
        self, request: RouterRequest, call_next: Callable[[RouterRequest], Awaitable[RouterResponse]], /
    ) -> RouterResponse:
        self.stats.requests += 1
        ids = request.get("input_ids")
        if not _is_token_list(ids):
            self.stats.uncacheable += 1
            return await call_next(request)
        tokens = tuple(ids)
        hit = self.tree.insert(tokens)
        self.stats.prompt_tokens += len(tokens)
        self.stats.prefix_hit_tokens += hit
        key = _cache_key(tokens, request) if _is_greedy(request) and self._max > 0 else None
        if key is None:
            self.stats.uncacheable += 1
        elif (cached := self._replies.get(key)) is not None:
            self._replies.move_to_end(key)
            self.stats.cache_hits += 1
            reply = copy.deepcopy(cached)
            reply.setdefault("meta_info", {})["router_cache_hit"] = True
            reply["meta_info"]["router_prefix_hit_tokens"] = hit
            return reply
        else:
            self.stats.cache_misses += 1
        reply = await call_next(request)
        meta = reply.get("meta_info")
        if isinstance(meta, dict):
            meta["router_prefix_hit_tokens"] = hit
            if key is not None:
                self._store(key, reply, meta)
        return reply

    def invalidate(self) -> None:
        """Drop every stored reply (weights changed). Prefix statistics are kept."""
        self._replies.clear()
        self._version = None

    def reset_stats(self) -> None:
        self.stats = PrefixCacheStats()

    def _store(self, key: tuple[tuple[int, ...], str], reply: RouterResponse, meta: dict[str, Any]) -> None:
        finish = meta.get("finish_reason")
        if isinstance(finish, dict) and finish.get("type") == "abort":
            return
        version = meta.get("weight_version")
        if version != self._version:
            # New weights answered: what older weights said is stale.
            self._replies.clear()
            self._version = version
        self._replies[key] = copy.deepcopy(reply)
        while len(self._replies) > self._max:
            self._replies.popitem(last=False)


def _is_token_list(value: object) -> TypeGuard[list[int]]:
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def _is_greedy(request: RouterRequest) -> bool:
    params = request.get("sampling_params")
    if not isinstance(params, dict) or request.get("stream"):
        return False
    temperature = params.get("temperature")
    return isinstance(temperature, (int, float)) and temperature == 0


def _cache_key(tokens: tuple[int, ...], request: RouterRequest) -> tuple[tuple[int, ...], str] | None:
    rest = {k: v for k, v in request.items() if k not in ("input_ids", "rid")}
    try:
        return tokens, json.dumps(rest, sort_keys=True)
    except (TypeError, ValueError):
        return None
