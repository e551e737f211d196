"""Device workers: device discovery, the device lease and its reaper, backends, the shard runner."""
