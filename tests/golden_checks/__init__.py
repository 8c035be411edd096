"""Golden-file checkers, one module per method; CHECKERS maps '<method>_<function>' to a check."""

from tests.golden_checks import divprune, holitom, vqtoken

CHECKERS = {**divprune.CHECKS, **holitom.CHECKS, **vqtoken.CHECKS}
