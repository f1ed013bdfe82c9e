"""The networks and what runs them outside training: cameras, layers, renderer, generator, discriminator,
snapshots and sample grids. Model code: no training, cluster or telemetry imports."""
