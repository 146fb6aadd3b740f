"""Georeferenced scenes: rasters read window by window (`raster`), detections written as GeoJSON (`geojson`).

    >>> from sl_detr_hf.geo import detections_to_geojson, open_raster, write_geojson
    >>> detections = detector("scene.tif", tile=1024, bands=(3, 2, 1))  # the oriented-object-detection pipeline
    >>> with open_raster("scene.tif") as raster:
    ...     collection = detections_to_geojson(detections, raster.transform, raster.crs, source=raster.path)
    >>> write_geojson(collection, "scene.geojson")

Importing this package needs only numpy and PIL; rasterio (``pip install -e ".[geo]"``) is imported when a raster
is opened or a CRS converted.
"""

from .geojson import WGS84, detections_to_geojson, pixel_to_map, write_geojson
from .raster import (
    GEO_EXTRA_HINT,
    RasterScene,
    is_raster_path,
    open_raster,
    parse_bands,
    rasterio_available,
    tiff_has_georeference,
)

__all__ = ["GEO_EXTRA_HINT", "WGS84", "RasterScene", "detections_to_geojson", "is_raster_path", "open_raster",
           "parse_bands", "pixel_to_map", "rasterio_available", "tiff_has_georeference", "write_geojson"]
