//! The trust sidecar (being written).
