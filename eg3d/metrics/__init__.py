"""Image quality: feature networks (`inception`), FID/KID statistics (`fid`), the measurement over workers
(`quality`)."""
