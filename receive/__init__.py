"""Push ingest over HTTP: OTLP/HTTP logs, Loki push, Elasticsearch bulk and NDJSON, into the log topic."""
