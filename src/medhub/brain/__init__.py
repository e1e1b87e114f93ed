"""Brain MRI: data layouts, preprocessing shared by training and inference, and its inverse."""
