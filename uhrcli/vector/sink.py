"""Vector files through pyogrio (GDAL), chosen by the output's suffix, written under a temporary name.

GeoPackage (and GeoParquet) take the features in batches as regions close, so nothing accumulates. GDAL can
only write GeoJSON and FlatGeobuf in one go (its GeoJSON driver rewrites the whole file on every append,
FlatGeobuf has no append), so for those the features (WKB and attributes) are held until the end: prefer
.gpkg for maps with millions of polygons. pyogrio's GDAL has no Parquet driver; GeoParquet is written with
pyarrow (the optional `parquet` extra) when it is installed.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from ..errors import MissingDependencyError, UsageError

DRIVERS = {".gpkg": "GPKG", ".fgb": "FlatGeobuf", ".geojson": "GeoJSON", ".json": "GeoJSON",
           ".parquet": "Parquet"}
STREAMED = {"GPKG", "Parquet"}
BATCH = 20_000
FIELDS = ("class_id", "class_name", "area", "pixels", "mean_prob")


def driver_for(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".shp":
        raise UsageError(f"{path.name}: Shapefile is not written (several files, 10-character field names, 2 GB); "
                         "use .gpkg, which every GIS opens")
    if suffix not in DRIVERS:
        known = ", ".join(sorted(DRIVERS))
        raise UsageError(f"{path.name}: unknown vector format {suffix or '(no suffix)'!r}; use one of {known}")
    if DRIVERS[suffix] == "Parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise MissingDependencyError("GeoParquet needs pyarrow (GDAL in pyogrio has no Parquet driver): "
                                         "pip install 'uhrcli[parquet]', or write .gpkg or .fgb") from None
    return DRIVERS[suffix]


@dataclass
class VectorSink:
    """Collects features and writes them to `path` (the temporary name) in `driver`'s format."""

    path: Path
    driver: str
    crs: Any  # rasterio CRS or None
    geometry_type: str  # Polygon or MultiPolygon
    with_probs: bool
    layer: str = "polygons"
    metadata: dict[str, str] = field(default_factory=dict)
    count: int = 0
    _geoms: list = field(default_factory=list)
    _cols: dict[str, list] = field(default_factory=lambda: {k: [] for k in FIELDS})
    _started: bool = False
    _pq: Any = None

    def add(self, geom: shapely.Geometry, class_id: int, class_name: str, area: float, pixels: int,
            mean_prob: float | None) -> None:
        self._geoms.append(geom)
        for k, v in zip(FIELDS, (class_id, class_name, area, pixels, mean_prob)):
            self._cols[k].append(v)
        self.count += 1
        if self.driver in STREAMED and len(self._geoms) >= BATCH:
            self._flush()

    def close(self) -> None:
        self._flush(final=True)
        if self._pq is not None:
            self._pq.close()
            self._pq = None

    def _fields(self) -> tuple[list[str], list[np.ndarray]]:
        names = [k for k in FIELDS if k != "mean_prob" or self.with_probs]
        arrays = [np.asarray(self._cols["class_id"], np.int32), np.asarray(self._cols["class_name"], object),
                  np.asarray(self._cols["area"], np.float64), np.asarray(self._cols["pixels"], np.int64)]
        if self.with_probs:
            arrays.append(np.asarray([np.nan if v is None else v for v in self._cols["mean_prob"]], np.float64))
        return names, arrays

    def _flush(self, final: bool = False) -> None:
        if not self._geoms and (self._started or not final):
            return
        names, arrays = self._fields()
        geoms = np.asarray(self._geoms, dtype=object) if self._geoms else np.zeros(0, object)
        if self.driver == "Parquet":
            self._write_parquet(geoms, names, arrays)
        else:
            from pyogrio.raw import write

            kw: dict[str, Any] = {}
            if self.driver == "GPKG" and not self._started and self.metadata:
                kw["layer_metadata"] = self.metadata
            if self.driver == "GeoJSON":
                kw["layer_options"] = {"RFC7946": "NO", "WRITE_NAME": "YES"}
            with warnings.catch_warnings():  # "no crs": the caller says so in its own words
                warnings.simplefilter("ignore", UserWarning)
                write(str(self.path), shapely.to_wkb(geoms), fields=names, field_data=arrays, driver=self.driver,
                      layer=self.layer, crs=self.crs.to_wkt() if self.crs is not None else None,
                      geometry_type=self.geometry_type, append=self._started, encoding="UTF-8", **kw)
        self._started = True
        self._geoms = []
        self._cols = {k: [] for k in FIELDS}

    def _write_parquet(self, geoms: np.ndarray, names: list[str], arrays: list[np.ndarray]) -> None:
        """GeoParquet 1.1: WKB geometry column, the CRS as PROJJSON in the file's `geo` metadata."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = {n: pa.array(a, type=pa.string() if n == "class_name" else None, from_pandas=True)
                for n, a in zip(names, arrays)}
        cols["geometry"] = pa.array(shapely.to_wkb(geoms), type=pa.binary())
        table = pa.table(cols)
        if self._pq is None:
            self._pq = pq.ParquetWriter(str(self.path), table.schema.with_metadata(self._geo_meta()))
        self._pq.write_table(table)

    def _geo_meta(self) -> dict[bytes, bytes]:
        col: dict[str, Any] = {"encoding": "WKB", "geometry_types": [self.geometry_type]}
        if self.crs is not None:
            col["crs"] = self.crs.to_dict(projjson=True)
        else:
            col["crs"] = None  # GeoParquet: null is "unknown", a missing key would mean WGS 84
        return {b"geo": json.dumps({"version": "1.1.0", "primary_column": "geometry",
                                    "columns": {"geometry": col}}).encode()}
