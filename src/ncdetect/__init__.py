"""ncdetect: audio deepfake detection with neural-collapse sampling of compact training sets."""

__version__ = "0.1.0"

# Class order used everywhere (heads, embeddings, scores): 0 = spoof, 1 = bonafide.
CLASSES = ("spoof", "bonafide")
SPOOF, BONAFIDE = 0, 1
