"""``prunequant`` with a search that has nearest-rounded candidates only (no GPTQ codes).

A measuring aid for ``bench_real.py --modes search_nearest``: the same command line as a
search, with the search's GPTQ candidates removed before the command runs, so the two
searches differ by GPTQ alone. Not a product switch: a search adds GPTQ codes whenever it
has calibration samples.

Run: ``python bench/search_nearest.py compress MODEL OUT [search options]``.
"""

from __future__ import annotations

from prunequant_cli import search
from prunequant_cli.cli import main

if __name__ == "__main__":
    search.GPTQ_CANDIDATES = ()
    main()
