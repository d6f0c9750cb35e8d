"""What every runtime layer uses: files, hashing, devices, the host, inputs, preprocessing."""
