"""miles_sdk: typed RL post-training on Miles semantics."""
