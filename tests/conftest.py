"""Shared test settings.

CI runs hypothesis derandomized (``HYPOTHESIS_PROFILE=ci`` in ``.ci/run``), so a submission's
result does not depend on which random examples a run happens to draw; locally the default
profile keeps exploring new examples.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
