"""Data files shipped with kvtier (real KV-cache pages in ``kvpages/``)."""
