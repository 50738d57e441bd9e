"""The progress bar every long loop shows (tqdm; disabled bars cost nothing)."""

from __future__ import annotations


def progress_bar(total: int | None, enabled: bool = True, desc: str | None = None, unit: str = "pair", **kwargs):
    from tqdm.auto import tqdm

    # unit="pair": tqdm's rate column reads "pair/s".
    return tqdm(total=total, disable=not enabled, unit=unit, desc=desc, smoothing=0.1, dynamic_ncols=True, **kwargs)
