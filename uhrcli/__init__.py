"""uhr: ultra-high-resolution segmentation and saliency on images larger than memory."""
__version__ = "0.1.0"
