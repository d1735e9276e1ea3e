//! Internal events of the `mongodb_change_stream` source.
