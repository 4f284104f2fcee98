"""Top-down heatmap pose estimation: keypoint layouts, data, transforms, model and metrics."""
