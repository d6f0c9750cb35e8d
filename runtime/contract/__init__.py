"""The artifact contract: manifest, artifact on disk, verdict calibration, engine headers, chains, precisions."""
