"""A Miles agent function as the nemo-gym / openenv examples write them (no miles_sdk import)."""

from typing import Any

from openai import AsyncOpenAI


async def run(
    base_url: str,
    prompt: Any,
    request_kwargs: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any] | None:
    client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key="EMPTY", max_retries=0)
    reply = await client.chat.completions.create(
        model="policy", messages=[{"role": "user", "content": prompt}], **(request_kwargs or {})
    )
    return {"reward": 1.0, "said": reply.choices[0].message.content, "meta_seen": sorted(metadata or {})}
