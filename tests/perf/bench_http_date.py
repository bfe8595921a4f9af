"""The strict HTTP-date parser against the email.utils one it replaced, per call.

    .venv/bin/python tests/perf/bench_http_date.py [--number 200000] [--repeat 5]

`http_date` runs on every miss for Date, Expires and Last-Modified (and for a client's
If-Modified-Since). Prints the best of `--repeat` runs in nanoseconds per call for each form,
valid and invalid, with the email.utils parser (RFC 5322 dates, lenient) beside it. Not
collected by pytest (tests/perf is outside testpaths).
"""

from __future__ import annotations

import argparse
import sys
import timeit
from datetime import UTC
from email.utils import parsedate_to_datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.cache.directives import http_date

SAMPLES = {
    "IMF-fixdate": "Sun, 06 Nov 1994 08:49:37 GMT",
    "rfc850-date": "Sunday, 06-Nov-94 08:49:37 GMT",
    "asctime-date": "Sun Nov  6 08:49:37 1994",
    "invalid (+1000)": "Thu, 18 Aug 2050 02:01:18 +1000",
    "invalid (0)": "0",
}


def email_utils_date(value: str | None) -> float | None:
    """The parser http_date replaced (lenient: accepts every RFC 5322 date)."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value.strip())
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def per_call(function: object, value: str, number: int, repeat: int) -> float:
    timer = timeit.Timer("f(v)", globals={"f": function, "v": value})
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"{'form':<18}{'http_date ns':>14}{'email.utils ns':>16}{'ratio':>8}")
    for name, value in SAMPLES.items():
        strict = per_call(http_date, value, args.number, args.repeat)
        lenient = per_call(email_utils_date, value, args.number, args.repeat)
        print(f"{name:<18}{strict:>14.0f}{lenient:>16.0f}{lenient / strict:>8.1f}")


if __name__ == "__main__":
    main()
