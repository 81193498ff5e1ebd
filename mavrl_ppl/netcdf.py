"""The one NetCDF engine of every file the package reads or writes (feedback.nc, posterior.nc, the tables' ``.nc``).

``netcdf4`` (the netCDF-C library) rather than ``h5netcdf`` (pure Python over h5py): on the default run's files,
side by side in one process (``benchmarks/netcdf_io.py``, RESULTS.md, 2026-12-03, 2 cores, medians of 5), writing
feedback.nc took 0.27x h5netcdf's time, reading it 0.24x, writing posterior.nc 0.48x and reading it 0.34x. h5netcdf
spends the difference in Python, resolving dimensions through h5py group lookups (~600 per group opened), which made
the file I/O the larger part of the tests that assemble tables from run directories.
Both write NetCDF-4 (HDF5) files that either library reads, so ``az.from_netcdf(path)`` with ArviZ's default engine
(h5netcdf, kept as a dependency for it) opens every file written here, and files written by h5netcdf load here.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

#: The ``engine`` of every xarray/ArviZ NetCDF read and write in the package.
ENGINE = "netcdf4"


def arviz() -> Any:
    """``import arviz`` without its once-a-day ``FutureWarning`` about the 1.0 refactor (the tests turn warnings into
    errors, and whether it fires depends on a cache file outside the project)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
    return az


def read_inference_data(path: str | os.PathLike) -> Any:
    """``az.from_netcdf`` through :data:`ENGINE`, every group loaded into memory and the file closed (ArviZ's
    default lazy load would keep it open, and netCDF-C then refuses to write a new file under that name)."""
    az = arviz()
    with az.rc_context({"data.load": "eager"}):
        return az.from_netcdf(os.fspath(path), engine=ENGINE)


def write_inference_data(idata: Any, path: str | os.PathLike) -> None:
    """``idata.to_netcdf`` through :data:`ENGINE` (ArviZ's compression on)."""
    idata.to_netcdf(os.fspath(path), engine=ENGINE)


def group_headers(path: str | os.PathLike) -> dict[str, tuple[dict[str, Any], dict[str, tuple[tuple[int, ...], Any]]]]:
    """Each top-level group's attributes and its variables' shapes and dtypes, from the file's header (no array is
    read): ``{group: (attrs, {variable: (shape, dtype)})}``.

    Raises:
        OSError: the file is missing or is not a NetCDF-4/HDF5 file.
    """
    import netCDF4

    with netCDF4.Dataset(os.fspath(path), "r") as handle:
        return {name: ({key: group.getncattr(key) for key in group.ncattrs()},
                       {var: (tuple(v.shape), v.dtype) for var, v in group.variables.items()})
                for name, group in handle.groups.items()}
