//! Where stored readings are copied to besides the store: long-range time
//! series in InfluxDB or VictoriaMetrics (`influx`), each with its own
//! bounded, disk-backed backlog so a slow sink never slows ingest.

pub mod influx;
