"""What a trained network tells: predictions, Grad-CAM saliency, the population's
embeddings, map, clusters and suggestions, and the floor and ceiling every accuracy
stands beside.
"""
