"""The HTTP edge: a thin FastAPI layer over :class:`query.service.SearchService`."""
