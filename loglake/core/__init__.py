"""The core every package may import: configuration, the frame format, the Kafka client,
topics, the metrics server and logging. It imports none of storage, ingest, query or shippers."""
