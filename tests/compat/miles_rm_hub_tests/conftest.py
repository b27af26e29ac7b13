"""Miles's own rm_hub unit tests (tests/fast/rollout/rm_hub in the Miles repository, copied
unchanged apart from an attribution header), run against the ``miles.*`` shims (issue 15.8)."""

from miles_sdk.compat import install

install()
