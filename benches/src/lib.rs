//! Load harness of the hub (being written).
