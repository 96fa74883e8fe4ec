"""The Loki-compatible API: LogQL compiled to the native planner, evaluated, answered as Loki does."""
