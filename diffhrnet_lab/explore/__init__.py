"""What notebooks call to look at things: feature PCA and k-means, probes, plots, widgets, parameter checks."""
