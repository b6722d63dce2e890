"""Coverage-guided fuzz targets (atheris) for netshield's parsers of untrusted bytes."""
