"""`uhrcli.vector.vectorize(...)`: class map raster -> polygons per class (the API behind `uhr vectorize`).

The map is read in row bands and regions that cross a band seam are joined exactly (uhrcli.vector.polygonize),
so the polygons equal those of the whole map polygonised at once, in bounded memory.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import shapely
from affine import Affine

from ..errors import UsageError
from ..io import writers as W
from ..proc import peak_rss_mb
from .polygonize import Region, polygonize_bands
from .sink import VectorSink, driver_for
from .source import class_names, nodata_value, open_class_map, probs_reader

MAX_CLASS = 65535
BAND_PIXELS = 1 << 24  # pixels per band (16 MP: 512 rows of a 32k-wide map)


@dataclass
class VectorOptions:
    simplify: float = 0.0  # tolerance in map units (topology-preserving, per polygon), 0: exact pixel edges
    min_area: float = 0.0  # drop polygons smaller than this, in map units squared (after simplification)
    classes: Sequence[int] | None = None  # None: every class but nodata and one named "background"
    connectivity: int = 4  # 4 as GDAL's polygonize; 8 joins pixels touching at a corner
    probs: str | os.PathLike | None = None  # probability raster: adds each polygon's mean probability
    overwrite: bool = False
    rows: int | None = None  # rows per band (None: about 16 MP per band)


@dataclass
class VectorResult:
    input: Path
    output: Path
    height: int
    width: int
    polygons: int
    per_class: dict[str, int]
    area_units: str
    seconds: float
    peak_rss_mb: float
    notes: list[str] = field(default_factory=list)

    @property
    def mpix_per_s(self) -> float:
        return self.height * self.width / 1e6 / self.seconds if self.seconds > 0 else 0.0


def temp_vector_path(target: Path) -> Path:
    """Like writers.temp_path, but keeping the suffix: GDAL's drivers judge a file by its extension."""
    return target.with_name(f".{target.stem}.uhr-tmp{target.suffix}")


def area_units(crs: Any, georeferenced: bool) -> str:
    if not georeferenced:
        return "pixel²"
    if crs is None:
        return "map unit²"
    if crs.is_geographic:
        return "degree²"
    unit = crs.linear_units or "map unit"
    return {"metre": "m²", "meter": "m²", "metres": "m²"}.get(unit.lower(), f"{unit}²")


def _check(opts: VectorOptions) -> None:
    if not np.isfinite(opts.simplify) or opts.simplify < 0:
        raise UsageError(f"--simplify must be a distance >= 0 in map units, got {opts.simplify}")
    if not np.isfinite(opts.min_area) or opts.min_area < 0:
        raise UsageError(f"--min-area must be >= 0 (map units squared), got {opts.min_area}")
    if opts.connectivity not in (4, 8):
        raise UsageError(f"--connectivity must be 4 or 8, got {opts.connectivity}")
    if opts.rows is not None and opts.rows < 1:
        raise UsageError(f"rows per band must be >= 1, got {opts.rows}")
    if opts.classes is not None:
        bad = [c for c in opts.classes if not 0 <= int(c) <= MAX_CLASS]
        if bad or not len(opts.classes):
            raise UsageError(f"--classes must be class ids 0..{MAX_CLASS}, got {list(opts.classes)}")


def wanted_classes(names: list[str], nodata: int | None, classes: Sequence[int] | None) -> np.ndarray:
    """Lookup table: wanted[value] is True for a class to vectorise."""
    wanted = np.zeros(MAX_CLASS + 1, bool)
    if classes is not None:
        for c in classes:
            if nodata is not None and int(c) == nodata:
                raise UsageError(f"--classes {c}: {c} is the map's nodata value, not a class")
            wanted[int(c)] = True
        return wanted
    wanted[:] = True
    if nodata is not None and 0 <= nodata <= MAX_CLASS:
        wanted[nodata] = False
    for i, n in enumerate(names):
        if n.strip().lower() == "background":
            wanted[i] = False
    return wanted


def vectorize(class_map: str | os.PathLike, output: str | os.PathLike, *, options: VectorOptions | None = None,
              progress: Callable[[str, int, int], Any] | None = None, **kw: Any) -> VectorResult:
    """Polygons of a class map (GeoTIFF/COG/zarr/PNG) in the map's CRS, one feature per connected region,
    with class_id, class_name, area (map units²), pixels and, given probabilities, mean_prob.

    progress(event, done, total) gets ("phase:polygons", 0, pixels) then ("advance", pixels, 0) per band.
    Keyword options (simplify=, min_area=, ...) override `options`.
    """
    opts = options or VectorOptions()
    for k, v in kw.items():
        if not hasattr(opts, k):
            raise TypeError(f"unknown option {k!r}")
        setattr(opts, k, v)
    _check(opts)
    t0 = time.perf_counter()
    src, target = Path(class_map), Path(output)
    driver = driver_for(target)
    W.refuse_inputs_as_outputs([target], [src] + ([Path(opts.probs)] if opts.probs is not None else []))
    W.check_target(target, opts.overwrite)
    reader = open_class_map(src)
    preader = None
    tmp = temp_vector_path(target)
    try:
        names = class_names(reader)
        nodata = nodata_value(reader)
        wanted = wanted_classes(names, nodata, opts.classes)
        read_probs = None
        if opts.probs is not None:
            preader, read_probs = probs_reader(opts.probs, reader, len(names) or None)
            if opts.classes is not None and preader.count >= 2 and max(opts.classes) >= preader.count:
                raise UsageError(f"--classes {max(opts.classes)}: {preader.path.name} has probabilities for classes "
                                 f"0..{preader.count - 1}")
        transform = reader.meta.transform
        georef = transform is not None
        transform = transform if georef else Affine.identity()
        units = area_units(reader.meta.crs, georef)
        notes = []
        if units == "degree²":
            notes.append("geographic CRS: areas are in square degrees (reproject the map for areas in metres)")
        if not georef:
            notes.append("the map has no georeferencing: coordinates are pixels (x right, y down)"
                         + ("; GeoJSON readers will take them for WGS 84" if driver == "GeoJSON" else ""))
        h, w = reader.height, reader.width
        rows = opts.rows or int(np.clip(BAND_PIXELS // max(w, 1), 16, 4096))
        W.discard(tmp)
        sink = VectorSink(tmp, driver, reader.meta.crs, "Polygon" if opts.connectivity == 4 else "MultiPolygon",
                          with_probs=read_probs is not None,
                          metadata={"area_units": units, "source": src.name, "connectivity": str(opts.connectivity),
                                    "simplify": str(opts.simplify), "min_area": str(opts.min_area)})
        from rasterio.windows import Window

        def band(r0: int, r1: int) -> np.ndarray:
            return reader.read(Window(0, r0, w, r1 - r0))[0]

        if progress:
            progress("phase:polygons", 0, h * w)
        per_class: dict[str, int] = {}
        for region in polygonize_bands(band, h, w, wanted, rows, opts.connectivity, read_probs,
                                       on_band=(lambda a, b: progress("advance", (b - a) * w, 0)) if progress else None):
            feature = _feature(region, transform, opts, sink.geometry_type)
            if feature is None:
                continue
            geom, area = feature
            name = names[region.cls] if region.cls < len(names) else f"class_{region.cls}"
            mean = region.prob_sum / region.pixels if read_probs is not None and region.pixels else None
            sink.add(geom, region.cls, name, area, region.pixels, mean)
            per_class[name] = per_class.get(name, 0) + 1
        sink.close()
        W.commit(tmp, target)
    except BaseException:
        W.discard(tmp)
        raise
    finally:  # in reverse order of opening: each reader holds a GDAL environment
        if preader is not None:
            preader.close()
        reader.close()
    return VectorResult(src, target, h, w, sink.count, per_class, units, time.perf_counter() - t0, peak_rss_mb(),
                        notes)


def _feature(region: Region, transform: Affine, opts: VectorOptions, geometry_type: str
             ) -> tuple[shapely.Geometry, float] | None:
    """Pixel geometry -> map geometry, simplified, filtered by area; None when dropped."""
    a, b, c, d, e, f = transform[:6]
    m = np.array([[a, d], [b, e]])
    geom = shapely.transform(region.geometry, lambda xy: xy @ m + (c, f))
    if opts.simplify > 0:
        geom = shapely.simplify(geom, opts.simplify, preserve_topology=True)
    if geom.is_empty:
        return None
    area = float(geom.area)
    if area < opts.min_area:
        return None
    if geometry_type == "MultiPolygon" and geom.geom_type == "Polygon":
        geom = shapely.multipolygons([geom])
    return geom, area


def check_segment_vector(vector: str | os.PathLike, many: bool) -> None:
    """`uhr segment --vector`: refused before any work when it cannot be written."""
    if many:
        raise UsageError("--vector takes a single input; for several, run `uhr vectorize` on each class map")
    driver_for(Path(vector))


def vectorize_segment_output(result: Any, vector: str | os.PathLike, fmt: str, overwrite: bool) -> None:
    """Polygons of a class map `uhr segment` has just committed (its probabilities give mean_prob); a note on
    the result says where they went. A resumed run that found everything done has nothing to add."""
    if "already complete" in result.notes:
        return
    probs = None
    if result.probs_output is not None:
        probs = result.probs_output / "probs" if fmt == "zarr" else result.probs_output
    r = vectorize(result.output, vector, probs=probs, overwrite=overwrite)
    result.notes.append(f"{r.polygons} polygons in {r.output}")
