"""Shim of ``miles.rollout.generate_hub``: ``single_turn``, ``multi_turn``, ``agentic_tool_call``.

Each ``generate`` takes Miles's newer ``GenerateFnInput`` and returns a ``GenerateFnOutput``; the
hook loader adapts them to this SDK's ``GenerateFn`` (see ``_convention``).
"""
