"""Smoke run of the issue-#7 GLO-N example on real digits (``--fast``).

The table's numbers are checked against a float64 recomputation from the printed table (eq. 5 from
the two medians), and the memorization signal against what GLO must do at the smallest N: a
decoder fitted to 16 digits with one free latent each recovers those digits far better than
held-out ones (Webster et al. (2019), table 1, GLO-128: disjoint error distributions, gap 0.97).
"""

from __future__ import annotations

import math

from tests.examples.conftest import load_example


def _table_rows(out: str) -> dict[int, list[float]]:
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].isdigit():
            rows[int(cells[0])] = [float(c) for c in cells[1:]]
    return rows


def test_glo_recovery_fast(capsys):
    module = load_example("glo_recovery")
    results = module.main(["--fast"])
    out = capsys.readouterr().out
    assert "| N | MRE train | MRE val | MRE-gap | KS p |" in out

    rows = _table_rows(out)
    assert sorted(rows) == sorted(results) == [16, 64, 256, 1024]
    for n, row in results.items():
        assert all(math.isfinite(v) for v in row.values()), (n, row)
        assert row["mre_train"] > 0 and row["mre_val"] > 0
        assert 0.0 <= row["ks_pvalue"] <= 1.0
        # Webster et al. (2019), eq. 5 in float64 from the two medians; the printed row says the
        # same numbers.
        gap = (row["mre_val"] - row["mre_train"]) / row["mre_val"]
        assert math.isclose(row["mre_gap"], gap, rel_tol=1e-12, abs_tol=1e-12)
        printed = [row["mre_train"], row["mre_val"], row["mre_gap"], row["ks_pvalue"]]
        for shown, value in zip(rows[n], printed, strict=True):
            assert math.isclose(shown, value, rel_tol=6e-3, abs_tol=6e-4), (n, rows[n], printed)

    # GLO-16 memorizes: training digits are recovered far better than held-out ones, and the KS
    # test (16 vs 32 errors) rejects one law at Webster et al.'s 1 % line. (Seeds 0-9 of this --fast
    # run: MRE train / MRE val <= 0.017, gap >= 0.98, KS p <= 2e-10.)
    smallest = results[16]
    assert smallest["mre_train"] < 0.1 * smallest["mre_val"], smallest
    assert smallest["mre_gap"] > 0.9 and smallest["ks_pvalue"] < 0.01, smallest

    # Webster table 1's shape, as far as it is reliable at --fast size: the gap falls from N = 16
    # to 64 and from 64 to the larger N (seeds 0-9: margins >= 0.15 and >= 0.27). The last step,
    # 256 -> 1024, is within the noise of 32-digit probes at 300 steps, so it is not asserted.
    gaps = {n: row["mre_gap"] for n, row in results.items()}
    assert gaps[16] > gaps[64] > max(gaps[256], gaps[1024]), gaps
