"""The shared vocabulary of the suite: event contracts, the topic registry, the dead-letter envelope and the
raw Kafka record. Everything else depends on this package; it depends on nothing else in the repository."""
