"""uhr: ultra-high-resolution segmentation and saliency on images larger than memory."""
import os as _os

__version__ = "0.1.0"

# torch's OpenMP threads spin between parallel regions by default. In uhr's pipeline the reader and writer
# threads need those cores: with spinning, fcn-tiny on a 36 MP raster took 12.6 s and 360 ms of CPU per MP,
# with passive waiting 7.2 s and 195 (isdnet-r18: 5.8 s against 3.4 s). libgomp reads this when torch loads,
# so it is set here, before torch, and never over a value the user chose.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
