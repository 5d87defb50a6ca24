"""The fuzz suites import the server test helpers from tests/; hypothesis keeps no example database here."""

import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

settings.register_profile("adapterkit-fuzz", deadline=None, database=None, derandomize=False, print_blob=True,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                 HealthCheck.data_too_large])
