import os
import sys
from pathlib import Path

from hypothesis import settings

sys.path.insert(0, str(Path(__file__).resolve().parent))

# In CI the property and mutation tests draw the same examples every run, so a red build
# is reproducible and never depends on luck; locally they explore new examples each run
# (PRUNEQUANT_FUZZ=N multiplies how many).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
