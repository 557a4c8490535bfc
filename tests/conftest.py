"""Shared test setup: hypothesis profiles.

Locally hypothesis explores new examples on every run. With ``CI`` set (``.ci/run`` sets it)
the "ci" profile derandomizes every property test, so a CI run is reproducible: the same
commit draws the same examples. ``HYPOTHESIS_PROFILE=<name>`` picks a profile explicitly.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
