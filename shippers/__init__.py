"""Tailing files into Kafka: discovery, watching, checkpoints, frames, producing."""
