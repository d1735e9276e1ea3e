//! Internal events of the `adls_partitioned_jsonl` sink.
