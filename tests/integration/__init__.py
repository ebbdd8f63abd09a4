"""Integration tests: real Kafka clients against a real ``keel`` broker process."""
