"""Verify DLRM MLPerf results as a reviewer would: the official checkers plus
the checks they miss, convergence, reports and submission packages.

    python -m verification PATH...            # logs, results folders or packages
    python -m verification package --config FILE --system NAME [--runs 5]
"""
