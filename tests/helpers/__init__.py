"""What the tests share: running processes, Kafka, lakes of segments, servers, relays and data.

Test files import from here and never from one another (tests/test_architecture.py checks it).
"""
